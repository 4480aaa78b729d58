"""Crash consistency of training: a kill -9 right before or right after any file commit of a run
(every ``os.replace`` it does), then ``resume``, ends with prompts bit-identical to an
uninterrupted run's and leaves no temporary file.

One driver subprocess imports s2swclip once, runs the uninterrupted reference (recording its
commits), then forks one child per crash point; each child trains with ``os.replace`` wrapped to
SIGKILL its own process before or after the N-th commit. The test resumes each crashed folder
in-process. Everything runs single-threaded, so floating-point results do not depend on how a
thread pool splits the work.
"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import s2swclip
from s2swclip.data.synthetic import generate_dataset
from s2swclip.model.checkpoint import load_prompts
from s2swclip.training.loop import train

EPOCHS = 2
KW = dict(backbone="S2SW-Tiny-4L", weights=None, epochs=EPOCHS, batch_size=2, image_size=56, seed=9,
          progress=False)
COMMITS = [name.format(e) for e in range(1, EPOCHS + 1)
           for name in ("train_state.safetensors", "prompts_epoch{:03d}.safetensors",
                        "prompts_last.safetensors", "train_log.jsonl")]
CASES = [(when, n) for n in range(1, len(COMMITS) + 1) for when in ("before", "after")]

DRIVER = r'''
import json, os, signal, sys
import torch
torch.set_num_threads(1)
import s2swclip.fileio
from s2swclip.training.loop import train

spec = json.loads(sys.argv[1])
real_replace = os.replace


def wrapped(out, seen, kill_at=None, when=None):
    """os.replace that records commits into ``out`` and SIGKILLs this process at one of them."""
    out = os.path.realpath(out)

    def replace(src, dst, *args, **kwargs):
        n = None
        if os.path.dirname(os.path.realpath(dst)) == out:
            seen.append(os.path.basename(dst))
            n = len(seen)
        if n == kill_at and when == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        real_replace(src, dst, *args, **kwargs)
        if n == kill_at and when == "after":
            os.kill(os.getpid(), signal.SIGKILL)
    return replace


commits = []
s2swclip.fileio.os.replace = wrapped(spec["reference"], commits)
train(spec["data"], spec["reference"], **spec["kwargs"])  # also warms up what the children share
outcome = {}
for n in range(1, len(commits) + 1):
    for when in ("before", "after"):
        out = os.path.join(spec["crashed"], f"{when}{n}")
        pid = os.fork()
        if pid == 0:
            try:
                s2swclip.fileio.os.replace = wrapped(out, [], n, when)
                train(spec["data"], out, **spec["kwargs"])
            finally:
                os._exit(3)  # reached only if the kill did not happen
        _, status = os.waitpid(pid, 0)
        outcome[f"{when}{n}"] = os.WTERMSIG(status) if os.WIFSIGNALED(status) else -os.WEXITSTATUS(status)
print(json.dumps({"commits": commits, "outcome": outcome}))
'''


@pytest.fixture(scope="module", autouse=True)
def _single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def crashed(tmp_path_factory):
    root = tmp_path_factory.mktemp("crash")
    data = generate_dataset(root / "data", classes=["pill"], n_train_good=1, n_test_good=2,
                            n_test_defect=2, image_size=64, seed=2)
    driver = root / "driver.py"
    driver.write_text(DRIVER)
    spec = {"data": str(data), "reference": str(root / "reference"), "crashed": str(root / "crashed"),
            "kwargs": KW}
    src = str(Path(s2swclip.__file__).resolve().parents[1])  # the package this test imports
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")])))
    r = subprocess.run([sys.executable, str(driver), json.dumps(spec)], capture_output=True, text=True,
                       env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(r.stdout.strip().splitlines()[-1])
    return data, root / "reference", root / "crashed", report


def test_each_epoch_commits_the_state_first_then_its_derived_files(crashed):
    _, _, _, report = crashed
    assert report["commits"] == COMMITS
    assert report["outcome"] == {f"{when}{n}": signal.SIGKILL for when, n in CASES}


def _records_without_time(path):
    lines = path.read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in lines]


@pytest.mark.parametrize("when,n", CASES, ids=[f"{w}-{COMMITS[n - 1]}-{n}" for w, n in CASES])
def test_resume_after_kill_matches_uninterrupted_run(crashed, when, n):
    data, reference, crashed_root, _ = crashed
    out = crashed_root / f"{when}{n}"
    left = [p for p in os.listdir(out) if p.endswith(".tmp")]
    assert bool(left) == (when == "before"), left  # a kill before os.replace leaves its temporary

    result = train(data, out, resume=True, **KW)

    names = sorted(os.listdir(out))
    assert names == sorted(os.listdir(reference)), names  # nothing missing, no temporaries
    assert not [p for p in names if p.endswith(".tmp") or p.startswith(".")]
    for name in [p for p in names if p.startswith("prompts_")]:
        want, got = load_prompts(reference / name), load_prompts(out / name)
        assert set(got.tensors) == set(want.tensors)
        for k in want.tensors:
            assert torch.equal(got.tensors[k], want.tensors[k]), (name, k)
        assert got.meta == want.meta, name
    assert _records_without_time(out / "train_log.jsonl") == _records_without_time(reference / "train_log.jsonl")
    assert [r["epoch"] for r in _records_without_time(out / "train_log.jsonl")] == list(range(1, EPOCHS + 1))
    assert [h["epoch"] for h in result.history] == list(range(1, EPOCHS + 1))
