#!/usr/bin/env bash
# Install what the browser test (tests/serve/test_browser.py) needs, idempotently:
#   - Debian's chromium at /usr/bin/chromium (apt), only when it is missing;
#   - the Python package `playwright` into the virtualenv given as $1 (pip), only when missing.
# No `playwright install`: the test drives the system chromium, nothing is downloaded by playwright.
#
# usage: scripts/install_browser_deps.sh [VENV]      (default: .venv)
set -euo pipefail

VENV="${1:-.venv}"
PY="$VENV/bin/python"

if [ ! -x /usr/bin/chromium ]; then
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "install_browser_deps: /usr/bin/chromium is missing and apt-get is not available" >&2
        exit 1
    fi
    SUDO=""
    if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
    echo "install_browser_deps: installing Debian's chromium"
    $SUDO apt-get update
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends chromium
else
    echo "install_browser_deps: /usr/bin/chromium present"
fi

if [ ! -x "$PY" ]; then
    echo "install_browser_deps: no python at $PY (pass the virtualenv as the first argument)" >&2
    exit 1
fi
if "$PY" -c "import playwright.sync_api" >/dev/null 2>&1; then
    echo "install_browser_deps: playwright present in $VENV"
else
    echo "install_browser_deps: installing playwright into $VENV"
    "$PY" -m pip install --quiet "playwright>=1.40"
fi
