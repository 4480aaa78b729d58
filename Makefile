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
	# wheels of the torch-free runtime (and what builds this package), for the offline fresh-
	# virtualenv check of scripts/check_runtime_install.sh (mostly from pip's cache by now)
	$(PY) -m pip download -q -d $(VENV)/wheelhouse -r requirements-runtime.txt setuptools wheel
	touch $(STAMP)

install: $(STAMP)

# Debian's chromium + playwright for the browser test; without them that test is skipped.
browser-deps: $(STAMP)
	scripts/install_browser_deps.sh $(VENV) || echo "browser deps not installed: the browser test will be skipped"

demo: $(STAMP)
	$(VENV)/bin/s2swclip demo --out demo_out

# The numerical tests once more under another kernel set: ATen's portable (non-vectorised) CPU
# kernels, oneDNN and MKL limited to AVX2. The results round differently from the default
# (AVX-512) kernels: a test that passes only through one ISA's rounding fails here.
# (test_weights.py reads archives: no arithmetic to round differently, 7 s saved.)
NUMERIC_TESTS := tests/model tests/export/test_forms.py tests/export/test_graph.py --ignore=tests/model/test_weights.py
OTHER_KERNELS := ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=AVX2 DNNL_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2

# One pytest process runs the whole suite (PyTorch, OpenVINO, ONNX Runtime and Ray in one process;
# CONTRIBUTING.md, "One process", says what was checked), then the numerical tests under the other
# kernel set (one thread, its output shown when it ends) beside the torch-free runtime check in a
# fresh virtualenv (mostly pip and process start-up): both must pass.
OTHER_LOG := $(VENV)/other-kernels.log
test: $(STAMP) browser-deps
	$(PY) -m pytest
	$(OTHER_KERNELS) OMP_NUM_THREADS=1 $(PY) -m pytest -p no:randomly $(NUMERIC_TESTS) > $(OTHER_LOG) 2>&1 & \
	other=$$!; scripts/check_runtime_install.sh $(PY); runtime=$$?; wait $$other; kernels=$$?; \
	echo "== numerical tests under the other kernel set ($(OTHER_KERNELS), 1 thread):"; cat $(OTHER_LOG); \
	test $$runtime -eq 0 && test $$kernels -eq 0

clean:
	rm -rf $(VENV) demo_out
