"""Freed tensors are reused instead of unmapped (glibc only): the model's steps stop paying a
page fault for every page of every intermediate tensor."""

import subprocess
import sys
from pathlib import Path

import pytest

import s2swclip
from s2swclip import allocator

SRC = str(Path(s2swclip.__file__).resolve().parents[1])

PROBE = """
import resource, sys, torch
torch.set_num_threads(1)
if sys.argv[1] == "on":
    from s2swclip.allocator import keep_freed_memory
    assert keep_freed_memory() and keep_freed_memory()  # once, then remembered
else:
    # glibc's default threshold (128 KiB), pinned: left alone, glibc raises it by itself after
    # the first large free, by an amount that depends on the order of frees, and the baseline
    # wanders (16,000-20,000 faults a call here, 3,400 on another run)
    import ctypes
    from s2swclip.allocator import _M_MMAP_THRESHOLD
    assert ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, 128 * 1024) == 1
from s2swclip.model.multiscale import enrich_features
x = torch.randn(8, 65, 768)
x = x / x.norm(dim=-1, keepdim=True)
enrich_features(x)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    enrich_features(x)
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20)
"""


def _faults_per_call(mode):
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": SRC, "PATH": "/usr/bin:/bin"})
    return float(out.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_the_multiscale_step_stops_faulting_in_fresh_pages():
    off, on = _faults_per_call("off"), _faults_per_call("on")
    # about 36,000 page faults a call (140 MB of fresh pages) when freed blocks are unmapped,
    # 200-700 with them kept
    assert on < off / 10, (off, on)


def test_it_is_a_no_op_that_says_so_off_linux(monkeypatch):
    monkeypatch.setattr(allocator, "_done", None)
    monkeypatch.setattr(allocator.sys, "platform", "darwin")
    assert allocator.keep_freed_memory() is False


def test_the_command_line_turns_it_on(monkeypatch):
    import importlib

    cli_main = importlib.import_module("s2swclip.cli.main")
    calls = []
    monkeypatch.setattr(cli_main, "keep_freed_memory", lambda: calls.append(1))
    main = cli_main.main
    assert main(["predict", "--help"]) == 0 and calls == []  # --help does no work
    main(["export", "--backbone", "S2SW-Tiny-24L", "--format", "onnx", "--out", "/proc/nowhere"])  # fails fast, after the thresholds were set
    assert calls == [1]
