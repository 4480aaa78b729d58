# Quick start: `make demo` (set up .venv, install, run the offline demo) and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test install browser-deps clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
	$(PY) -m pip install -q -e ".[test,ray,export]"
	touch $(STAMP)

install: $(STAMP)

# Debian's chromium + playwright for the browser test; without them that test is skipped.
browser-deps: $(STAMP)
	scripts/install_browser_deps.sh $(VENV) || echo "browser deps not installed: the browser test will be skipped"

demo: $(STAMP)
	$(VENV)/bin/s2swclip demo --out demo_out

# The tests that load the native inference runtimes (OpenVINO, ONNX Runtime) and Ray run in a
# pytest process of their own: one process that had loaded them all crashed (SIGSEGV) later in
# PyTorch training code. Both runs together are the whole suite.
ISOLATED_TESTS := tests/export tests/runtime tests/inference/test_ray_engine.py tests/test_cli_ray.py

test: $(STAMP) browser-deps
	$(PY) -m pytest $(addprefix --ignore=,$(ISOLATED_TESTS))
	$(PY) -m pytest $(ISOLATED_TESTS)
	scripts/check_runtime_install.sh $(PY)

clean:
	rm -rf $(VENV) demo_out
