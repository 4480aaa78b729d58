#!/usr/bin/env bash
# The documented torch-free install of the runtime, verified in a fresh virtualenv:
#   1. the full environment (PYTHON, with torch) exports a tiny random-weights model to ONNX;
#   2. a new virtualenv gets requirements-runtime.txt and 'pip install --no-deps' of this package;
#   3. torch must not be importable there, and 's2swclip predict --model' must run and give the
#      scores of the full environment's PyTorch 'predict' (within 1e-5).
# Offline when the full environment holds a wheelhouse (VENV/wheelhouse: 'make install' fills it
# with the runtime requirements' wheels, and setuptools + wheel to build this package): the new
# virtualenv is then installed from it with --no-index. Without one, pip uses the index.
# Fails (non-zero exit) when any step fails. Usage: scripts/check_runtime_install.sh [PYTHON]
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="${1:-$ROOT/.venv/bin/python}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/s2sw-runtime-check.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
MODEL=(--backbone S2SW-Tiny-4L --weights none --image-size 112)  # the shallow test backbone
WHEELS="$(cd "$(dirname "$PY")/.." && pwd)/wheelhouse"
PIP_SOURCE=()
if [ -d "$WHEELS" ]; then
    PIP_SOURCE=(--no-index --find-links "$WHEELS")
fi

echo "runtime install check: exporting a tiny model with $PY"
"$PY" - "$WORK/images" <<'PYEOF'
import sys
from pathlib import Path
import numpy as np
from PIL import Image
out = Path(sys.argv[1]); out.mkdir()
for i in range(3):
    arr = np.random.default_rng(i).integers(0, 256, (90 + 10 * i, 120, 3), dtype=np.uint8)
    Image.fromarray(arr).save(out / f"img{i}.png")
PYEOF
# the export and the PyTorch reference run while the virtualenv is built (they wait on nothing of it)
"$PY" -m s2swclip.cli export --format onnx --out "$WORK/model" "${MODEL[@]}" --quiet &
EXPORT_PID=$!
"$PY" -m s2swclip.cli predict "${MODEL[@]}" "$WORK/images" --out "$WORK/reference" --no-overlays --quiet >/dev/null &
REFERENCE_PID=$!

echo "runtime install check: fresh virtualenv with requirements-runtime.txt + pip install --no-deps"
(
    unset PYTHONPATH  # the virtualenv must see only what was installed into it
    "$PY" -m venv "$WORK/venv"
    "$WORK/venv/bin/python" -m pip install -q "${PIP_SOURCE[@]}" -r "$ROOT/requirements-runtime.txt"
    "$WORK/venv/bin/python" -m pip install -q "${PIP_SOURCE[@]}" --no-deps "$ROOT"
)
wait "$EXPORT_PID" || { echo "runtime install check FAILED: the export failed" >&2; exit 1; }
wait "$REFERENCE_PID" || { echo "runtime install check FAILED: the PyTorch reference predict failed" >&2; exit 1; }
unset PYTHONPATH
if "$WORK/venv/bin/python" -c "import torch" 2>/dev/null; then
    echo "runtime install check FAILED: torch is importable in the runtime virtualenv" >&2
    exit 1
fi

(cd "$WORK" && "$WORK/venv/bin/s2swclip" predict --model "$WORK/model" "$WORK/images" --out "$WORK/runtime" --quiet)
"$WORK/venv/bin/python" - "$WORK/reference/results.json" "$WORK/runtime/results.json" <<'PYEOF'
import json, sys
ref, got = (json.load(open(p))["results"] for p in sys.argv[1:3])
assert [r["name"] for r in ref] == [r["name"] for r in got], "different inputs"
worst = max(abs(a["score"] - b["score"]) for a, b in zip(ref, got))
assert worst <= 1e-5, f"runtime scores differ from PyTorch by {worst:.2e}"
assert "torch" not in sys.modules
print(f"runtime install check passed: {len(got)} images, max |score - PyTorch| {worst:.1e}, torch not installed")
PYEOF
