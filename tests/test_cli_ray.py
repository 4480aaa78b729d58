"""`s2swclip predict --engine ray` as a user meets it: manifests in, Parquet rows out, the same
rows as the local engine, one clear line for each mistake."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ray = pytest.importorskip("ray")
pa = pytest.importorskip("pyarrow")
import pyarrow.parquet as pq  # noqa: E402

import s2swclip  # noqa: E402
from s2swclip.inference.shards import read_results  # noqa: E402
from helpers import assert_user_error, run_cli  # noqa: E402

TINY = ["--backbone", "S2SW-Tiny-4L", "--weights", "none", "--image-size", "56"]
SRC = str(Path(s2swclip.__file__).resolve().parents[1])


@pytest.fixture
def cluster(ray_cluster):
    """The session's Ray instance (tests/conftest.py): its GCS address."""
    return ray_cluster


@pytest.fixture(scope="module")
def manifests(tmp_path_factory):
    """24 images listed by a text, a CSV and a Parquet manifest (overlapping), one missing path."""
    root = tmp_path_factory.mktemp("manifests")
    rng = np.random.default_rng(1)
    paths = []
    for i in range(24):
        p = root / "imgs" / ("a", "b")[i % 2] / f"{i:02d}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (30 + i, 40, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    (root / "list.txt").write_text("# first half, relative to this file\n" +
                                   "".join(f"{os.path.relpath(p, root)}\n" for p in paths[:12]) + "imgs/gone.png\n")
    with open(root / "list.csv", "w", newline="") as f:
        f.write("path,label\n" + "".join(f"{p},x\n" for p in paths[8:18]))
    pq.write_table(pa.table({"path": paths[16:]}), root / "list.parquet")
    return root, paths


def test_ray_engine_on_manifests_gives_the_local_engines_rows(capsys, cluster, manifests, tmp_path):
    root, paths = manifests
    inputs = [root / "list.txt", root / "list.csv", root / "list.parquet"]
    code, out, err = run_cli(capsys, "predict", *inputs, "--out", tmp_path / "local", "--threshold", "0.5",
                          "--quiet", *TINY)
    assert code == 0, err
    code, out, err = run_cli(capsys, "predict", *inputs, "--out", tmp_path / "ray", "--threshold", "0.5", "--quiet",
                          "--engine", "ray", "--workers", "2", "--cpus-per-worker", "0.5", "--shard-rows", "5",
                          "--batch-size", "4", *TINY)
    assert code == 0, err
    assert "24 scored, 1 skipped (25 rows written now, 0 already done)" in out
    local = json.loads((tmp_path / "local" / "results.json").read_text())["results"]
    rows = read_results(tmp_path / "ray").to_pylist()
    assert [r["path"] for r in rows] == sorted(paths + [str(root / "imgs" / "gone.png")])
    floats = ("score", "map_max", "map_mean", "map_frac_above")
    for r, q in zip(rows, local):  # the same rows; scores within 1e-6 (batches of 4 here, of 8 there)
        assert {k: v for k, v in r.items() if k not in floats} == {k: v for k, v in q.items() if k not in floats}
        assert all(r[f] == q[f] if q[f] is None else abs(r[f] - q[f]) <= 1e-6 for f in floats), (r, q)
    assert rows[-1]["error_code"] == "missing" and rows[-1]["path"].endswith("gone.png")
    assert len(list((tmp_path / "ray" / "results").glob("part-*.parquet"))) >= 3
    # the header of the local CSV is the Parquet schema
    header = (tmp_path / "local" / "results.csv").read_text().splitlines()[0].split(",")
    assert header == pq.read_schema(next((tmp_path / "ray" / "results").glob("part-*.parquet"))).names

    # the same command again: nothing to do; other settings: refused
    code, out, err = run_cli(capsys, "predict", *inputs, "--out", tmp_path / "ray", "--threshold", "0.5", "--quiet",
                          "--engine", "ray", *TINY)
    assert code == 0 and "(0 rows written now, 25 already done)" in out
    code, out, err = run_cli(capsys, "predict", *inputs, "--out", tmp_path / "ray", "--quiet", "--engine", "ray", *TINY)
    assert_user_error(code, err, "holds results of a different run", "threshold")


def test_unreachable_ray_address_is_one_error_line_quickly(tmp_path):
    """As a user runs it (a process of its own): no cluster there, one line in seconds, not
    Ray's minutes of retries."""
    (tmp_path / "a.png").write_bytes(b"")
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]))
    t = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "s2swclip.cli", "predict", str(tmp_path / "a.png"), "--out",
                           str(tmp_path / "o"), "--engine", "ray", "--ray-address", f"127.0.0.1:{port}", *TINY],
                          env=env, capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - t
    assert_user_error(proc.returncode, proc.stderr, f"cannot reach a Ray cluster at ray_address 127.0.0.1:{port}, ",
                      "(--ray-address); start one with 'ray start --head'")
    assert elapsed < 60, elapsed  # imports included; the connection attempt itself is bounded by 5 s
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("argv, needles", [
    (["--workers", "2"], ["--workers only apply with --engine ray"]),
    (["--engine", "ray", "--device", "cuda"], ["device cuda with the Ray engine (--device): give the workers GPUs with gpus_per_worker",
                                              "(--gpus-per-worker)"]),
    (["--engine", "ray", "--gpus-per-worker", "1", "--device", "cuda:1"], ["Ray assigns each worker its GPUs"]),
    (["--engine", "ray", "--gpus-per-worker", "-1"], ["--gpus-per-worker", "must be >= 0"]),
    (["--engine", "ray", "--ray-address", "nonsense"], ["is not HOST:PORT"]),
    (["--engine", "ray", "--prompts", "missing.safetensors"], ["missing.safetensors"]),
])
def test_ray_usage_errors_are_one_line(capsys, tmp_path, argv, needles):
    Image.new("RGB", (20, 20)).save(tmp_path / "a.png")
    code, _, err = run_cli(capsys, "predict", tmp_path / "a.png", "--out", tmp_path / "o", *TINY, *argv)
    assert_user_error(code, err, *needles)


def test_a_resume_whose_model_inputs_changed_is_refused_naming_what_changed(capsys, cluster, manifests, tmp_path):
    """The run records the content digests of the model inputs: the prompts file replaced (same
    path, other prompts) between two runs into one folder is one error line naming ``prompts``."""
    import torch

    from s2swclip.model.checkpoint import save_prompts

    root, _ = manifests
    det = s2swclip.load_detector("S2SW-Tiny-4L", None, None, image_size=56, untrained_ok=True)
    prompts = tmp_path / "prompts.safetensors"
    save_prompts(prompts, det.prompts, {"backbone": "S2SW-Tiny-4L"})
    argv = ["predict", root / "list.txt", "--out", tmp_path / "ray", "--quiet", "--engine", "ray",
            "--prompts", prompts, *TINY]
    code, out, err = run_cli(capsys, *argv)
    assert code == 0, err
    run = json.loads((tmp_path / "ray" / "results" / "_run.json").read_text())
    assert set(run["settings"]["digests"]) == {"prompts"}
    shards = sorted((tmp_path / "ray" / "results").glob("part-*.parquet"))
    with torch.no_grad():
        for p in det.prompts.parameters():
            p.add_(0.25)
    save_prompts(prompts, det.prompts, {"backbone": "S2SW-Tiny-4L"})
    code, out, err = run_cli(capsys, *argv)
    assert_user_error(code, err, "holds results of a different run: prompts changed since")
    assert sorted((tmp_path / "ray" / "results").glob("part-*.parquet")) == shards


def test_local_engine_thread_options_are_refused_with_the_ray_engine(capsys, tmp_path):
    for flags, needle in ((["--threads", "2"], "--threads only apply with the local engine"),
                          (["--decode-workers", "3"], "--decode-workers only apply with the local engine"),
                          (["--model-streams", "2"], "--model-streams only apply with the local engine"),
                          (["--threads", "1", "--decode-workers", "1"], "--threads and --decode-workers only")):
        code, _, err = run_cli(capsys, "predict", str(tmp_path), "--out", str(tmp_path / "o"), "--engine", "ray",
                               "--backbone", "S2SW-Tiny-4L", "--weights", "none", *flags)
        assert_user_error(code, err, needle)
    assert not (tmp_path / "o").exists()
