"""`s2swclip watch` as a production line meets it: a real watcher process, files written slowly,
renamed in, dropped in bursts, corrupt, replaced; `kill -9` and a restart; sorting and the
--on-anomaly command. Shallow random backbone at 56 px: the numbers do not matter, the
bookkeeping does (every file exactly one result line)."""

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import s2swclip
from helpers import assert_user_error, run_cli

# the shallow test backbone (CONTRIBUTING, "Test backbones"): the bookkeeping is under test, not the model
TINY = ["--backbone", "S2SW-Tiny-4L", "--weights", "none", "--image-size", "56"]
SRC = str(Path(s2swclip.__file__).resolve().parents[1])


def jpeg(seed: int, w: int = 64, h: int = 48) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def drop(folder: Path, name: str, data: bytes) -> None:
    """What a careful camera does: write under a temporary name, rename into the folder."""
    tmp = folder / (name + ".part")
    tmp.write_bytes(data)
    os.rename(tmp, folder / name)


def start(inp: Path, out: Path, *extra) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]))
    argv = [sys.executable, "-m", "s2swclip.cli", "watch", str(inp), "--out", str(out), *TINY, "--threads", "1",
            "--batch-size", "4", *map(str, extra)]
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def lines(out: Path) -> list[dict]:
    path = out / "results.jsonl"
    if not path.exists():
        return []
    text = path.read_text()
    return [json.loads(line) for line in text.splitlines()[: text.count("\n")]]


def wait_for(out: Path, proc: subprocess.Popen, pred, timeout: float = 40.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = lines(out)
        if pred(rows):
            return rows
        if proc.poll() is not None:
            raise AssertionError(f"watcher exited {proc.returncode}: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"timed out; {len(lines(out))} lines; {proc.communicate()[1].decode()[-2000:]}")


def finish(proc: subprocess.Popen, timeout: float = 60.0) -> str:
    """Wait for a clean exit; returns its stdout (the summary line)."""
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err.decode()[-3000:]
    return out.decode()


@pytest.mark.slow
def test_a_production_day_every_file_scored_exactly_once_through_kill_9(tmp_path):
    """Files present at start (corrupt, empty, not an image, temporary names), a burst of 200
    renamed in, `kill -9` mid-burst; after the restart: a file written slowly in chunks, files
    renamed in, a file replaced with new content, a file only touched."""
    inp, out, hooks = tmp_path / "in", tmp_path / "out", tmp_path / "hooks"
    inp.mkdir()
    hooks.mkdir()
    present = {"old.jpg": jpeg(1), "corrupt.jpg": jpeg(2, 320, 240)[:1500], "empty.png": b"", "notes.txt": b"text"}
    for name, data in present.items():
        (inp / name).write_bytes(data)
    for name in ("camera.tmp", "upload.jpg.part", "~lock.jpg", ".hidden.jpg"):  # never scored
        (inp / name).write_bytes(jpeg(3))
    hook = f"sh -c 'cat > \"$(mktemp -p {hooks} XXXXXXXX.json)\"'"  # each run saves its stdin
    args = ("--settle-ms", 1500, "--threshold", 0.0, "--on-anomaly", hook)
    proc = start(inp, out, *args)
    burst = {f"part{i:03d}.jpg": jpeg(1000 + i) for i in range(200)}
    for name, blob in burst.items():
        drop(inp, name, blob)
    wait_for(out, proc, lambda rows: len(rows) >= 30)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    at_kill = len(lines(out))
    assert at_kill < len(present) + len(burst)  # killed mid-run

    proc = start(inp, out, *args)
    slow = jpeg(10, 320, 240)  # five chunks, 100 ms apart (well under the 1.5 s settle time)
    with open(inp / "slow.jpg", "wb") as f:
        for k in range(5):
            f.write(slow[k * len(slow) // 5:(k + 1) * len(slow) // 5])
            f.flush()
            os.fsync(f.fileno())
            time.sleep(0.1)
    renamed = {f"r{i}.jpg": jpeg(20 + i) for i in range(4)}
    for name, data in renamed.items():
        drop(inp, name, data)
    wait_for(out, proc, lambda rows: {"slow.jpg", *renamed, *burst} <= {r["name"] for r in rows}, timeout=90)
    os.utime(inp / "r0.jpg")  # same content, new mtime: not a new part
    new_old = jpeg(99)  # rewritten in place with new content: a new part (settles after r0.jpg)
    (inp / "old.jpg").write_bytes(new_old)
    wait_for(out, proc, lambda rows: sum(r["name"] == "old.jpg" for r in rows) == 2)
    proc.send_signal(signal.SIGTERM)  # finishes what is in flight, exits cleanly (status 0)
    summary = finish(proc)
    assert f"{at_kill + 1} already done" in summary  # the files scored before the kill, and r0.jpg

    rows = lines(out)
    assert sorted(r["name"] for r in rows) == sorted([*present, "old.jpg", "slow.jpg", *renamed, *burst])
    by_sha = {r["sha256"]: r for r in rows}
    assert set(by_sha) == {sha(b) for b in [*present.values(), new_old, slow, *renamed.values(), *burst.values()]}
    assert by_sha[sha(slow)]["error"] is None  # scored once, complete
    codes = {r["name"]: r["error_code"] for r in rows if r["error"]}
    assert codes == {"corrupt.jpg": "corrupt", "empty.png": "empty", "notes.txt": "not_an_image"}
    for r in rows:
        if r["error"] is None:
            assert 0 <= r["score"] <= 1 and r["anomalous"] is True  # threshold 0
            assert (out / r["overlay"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # --on-anomaly: once per anomalous result, that result on stdin; after the restart, for all
    # (results made durable just before the kill may have lost theirs: at most once). The hooks
    # run one at a time, so the kill can have cut off at most one: its file was made, but the
    # dead watcher never wrote the result to its stdin (an empty file).
    texts = [p.read_text() for p in hooks.glob("*.json")]
    assert texts.count("") <= 1
    ran = [json.loads(t) for t in texts if t]
    anomalous = {r["sha256"]: r for r in rows if r["anomalous"]}
    assert all(anomalous[r["sha256"]] == r for r in ran) and len({r["sha256"] for r in ran}) == len(ran)
    assert {r["sha256"] for r in rows[at_kill:] if r["anomalous"]} <= {r["sha256"] for r in ran}


def test_sort_moves_or_copies_each_file_by_its_verdict(tmp_path, capsys):
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    data = {f"{i}.jpg": jpeg(i) for i in range(6)} | {"sub.jpg": b"\xff\xd8 broken"}
    for name, blob in data.items():
        (inp / name).write_bytes(blob)
    scores = {}
    for copy in (True, False):
        out_k = out / ("copy" if copy else "move")
        code, err = _run(capsys, inp, out_k, "--threshold", 0.5, "--sort", *(["--sort-copy"] if copy else []),
                         "--exit-when-idle", 0, "--settle-ms", 0)
        assert code == 0, err
        rows = lines(out_k)
        assert sorted(r["name"] for r in rows) == sorted(data)
        for r in rows:
            folder = "error" if r["error"] else ("anomalous" if r["anomalous"] else "ok")
            assert (out_k / folder / r["name"]).read_bytes() == data[r["name"]]
            assert r["anomalous"] is None if r["error"] else r["anomalous"] == (r["score"] > 0.5)
            scores.setdefault(r["name"], []).append(r["score"])
        assert sorted(p.name for p in inp.iterdir()) == (sorted(data) if copy else [])
    assert all(a == b for a, b in scores.values())  # same model, same bytes, same score


def test_bad_input_is_one_error_line(tmp_path, capsys):
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    assert_user_error(*_run(capsys, tmp_path / "nope", out), "missing")
    assert_user_error(*_run(capsys, inp, inp), "same folder")
    (out / "cam").mkdir(parents=True)
    assert_user_error(*_run(capsys, out / "cam", out), "inside")
    (tmp_path / "file").write_text("x")
    assert_user_error(*_run(capsys, inp, tmp_path / "file" / "out"), "file")
    if Path("/proc/self").is_dir():  # /proc refuses new folders even to root
        assert_user_error(*_run(capsys, inp, "/proc/s2swclip-no-such-folder/out"),
                          "cannot create out_dir /proc/s2swclip-no-such-folder/out (--out): ")
    assert_user_error(*_run(capsys, inp, out, "--sort"), "--sort needs")
    assert_user_error(*_run(capsys, inp, out, "--on-anomaly", "notify 'unclosed"), "--on-anomaly", "cannot be split")
    # a ledger written with another threshold
    code, err = _run(capsys, inp, out, "--threshold", 0.5, "--exit-when-idle", 0)
    assert code == 0, err
    assert_user_error(*_run(capsys, inp, out, "--threshold", 0.6, "--exit-when-idle", 0), "threshold", "0.5", "0.6")


def _run(capsys, inp, out, *extra):
    code, _, err = run_cli(capsys, "watch", inp, "--out", out, *TINY, "--quiet", *extra)
    return code, err


def test_on_anomaly_failures_are_logged_and_scoring_goes_on(tmp_path, caplog):
    from s2swclip.inference.watch.actions import HookRunner

    go = tmp_path / "go"
    waiting = HookRunner(f"sh -c 'cat >/dev/null; while [ ! -e {go} ]; do sleep 0.02; done'", timeout=60)
    failing = HookRunner("sh -c 'cat >/dev/null; echo broken conveyor >&2; exit 3'", timeout=5)
    slow = HookRunner("sleep 30", timeout=1.5)
    missing = HookRunner("/no/such/program", timeout=5)
    for r in (waiting, failing, slow, missing):
        r.offer('{"anomalous": true}')
    assert waiting.ran == 0  # offered and back, while the command still runs: scoring never waits
    go.touch()
    for r in (waiting, failing, slow, missing):
        r.close()
    text = caplog.text
    assert "exited with status 3: broken conveyor" in text
    assert "ran longer than 1.5 s and was stopped" in text
    assert "could not run" in text
    assert [(r.ran, r.failed) for r in (waiting, failing, slow, missing)] == [(1, 0), (1, 1), (0, 1), (0, 1)]


def test_threads_are_set_for_the_command_and_restored(tmp_path, capsys, monkeypatch):
    import torch

    calls = []
    real, before = torch.set_num_threads, torch.get_num_threads()
    monkeypatch.setattr(torch, "set_num_threads", lambda n: (calls.append(n), real(n)))
    (tmp_path / "in").mkdir()
    code, err = _run(capsys, tmp_path / "in", tmp_path / "out", "--threads", 1, "--exit-when-idle", 0)
    assert code == 0, err
    assert calls == [1, before] and torch.get_num_threads() == before
