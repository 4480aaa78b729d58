#!/usr/bin/env bash
# The checks of one session on a lent GPU machine, in one go (each step time-limited, the log in
# $OUT/device.log): the numerical tests on that machine's CPU (another CPU kind than ours), the
# CUDA unit tests, CUDA-vs-CPU parity of the tiny detector in fp32/bf16/fp16, how many decode
# workers keep the GPU fed (benchmarks/gpu_feed.py), and product profiles on ViT-L-14-336 at 518 px
# (benchmarks/profiles.py), and the CPU pipeline on that machine's 16 cores (model streams vs
# threads: benchmarks/watch_latency.py). Packages missing there (open_clip_torch, ftfy, wcwidth,
# PyWavelets, watchdog)
# travel as wheels in .whl/ (see the device tool's notes).
set -uo pipefail
OUT=${OUT:-/tmp/device_out}
mkdir -p "$OUT"
exec > >(tee "$OUT/device.log") 2>&1
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
fi
export PYTHONPATH=/tmp/site:$PWD/src:$PWD/benchmarks PYTHONUNBUFFERED=1
step() { echo; echo "=== $* ($(date +%T))"; }
step machine
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
lscpu | grep -E "Model name|^CPU\(s\)|Flags" | sed -E 's/(Flags:).*(avx512f|amx)/\1 ... \2/' | cut -c1-160
grep -o -E "avx512_bf16|amx_tile|avx512f" /proc/cpuinfo | sort | uniq -c
python3 -c "import torch, open_clip; print('torch', torch.__version__, 'open_clip', open_clip.__version__)"
step "numerical tests on this CPU + CUDA tests"
timeout 140 python3 -m pytest -q -p no:cacheprovider tests/model tests/export/test_forms.py tests/export/test_graph.py 2>&1 | tail -15
step "CUDA vs CPU parity"
timeout 80 python3 benchmarks/device_check.py --no-timings
step "decode workers a GPU needs"
timeout 170 python3 benchmarks/gpu_feed.py --device cuda --precision bf16 --n 256 --side 1920 --workers 1 2 4 8 12
step "CPU pipeline on 16 cores (tiny backbone; is the default threads setting slower than 1 thread?)"
timeout 120 python3 benchmarks/watch_latency.py --n 600 --latency-n 40 --rounds 1 2>&1 | tail -9
step "profiles on ViT-L-14-336 at 518 px"
timeout 150 python3 benchmarks/profiles.py --device cuda --rounds 2 --predict-rounds 20
step done
