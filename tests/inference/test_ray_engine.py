"""The Ray engine against the local one: the same rows, resumable after a kill -9 of its driver.

One local Ray instance (2 CPUs, no dashboard) serves the whole module; the tiny backbone at
56 px scores a few hundred small images, broken files among them.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ray = pytest.importorskip("ray")
pytest.importorskip("pyarrow")

import s2swclip  # noqa: E402
from s2swclip.errors import S2SWError  # noqa: E402
from s2swclip.inference.local import RESULT_FIELDS, predict_files  # noqa: E402
from s2swclip.inference.ray_engine import predict_ray  # noqa: E402
from s2swclip.inference.shards import committed_paths, read_results  # noqa: E402
from s2swclip.inference.spec import ScorerSpec  # noqa: E402
from s2swclip.model.checkpoint import save_prompts  # noqa: E402

SIZE = 56
THRESHOLD = 0.47  # about the median score of these images with the shallow test backbone: both decisions occur
N_GOOD = 300
FLOATS = ("score", "map_max", "map_mean", "map_frac_above")
SRC = str(Path(s2swclip.__file__).resolve().parents[1])  # the package under test, for subprocesses


@pytest.fixture
def cluster(ray_cluster):
    """The session's Ray instance (tests/conftest.py): its GCS address."""
    return ray_cluster


def _image(path, rng):
    h, w = (int(v) for v in rng.integers(24, 72, 2))
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """300 images in three folders (a.png/a.jpg share a name), five broken inputs, prompts."""
    root = tmp_path_factory.mktemp("ray_data")
    imgs = root / "imgs"
    rng = np.random.default_rng(0)
    for i in range(N_GOOD - 1):
        sub = imgs / ("good", "crack", "scratch/deep")[i % 3]
        sub.mkdir(parents=True, exist_ok=True)
        _image(sub / f"{i:03d}.{('png', 'jpg', 'bmp')[i % 3 // 2]}", rng)
    _image(imgs / "good" / "000.jpg", rng)  # same overlay name as good/000.png
    (imgs / "crack" / "truncated.png").write_bytes((imgs / "good" / "000.png").read_bytes()[:60])
    (imgs / "crack" / "empty.png").write_bytes(b"")
    (imgs / "crack" / "text.png").write_text("not an image")
    (imgs / "crack" / "short.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    os.symlink(imgs / "gone.png", imgs / "good" / "dangling.png")
    det = s2swclip.load_detector("S2SW-Tiny-4L", None, None, image_size=SIZE, untrained_ok=True)
    with torch.no_grad():  # prompts scaled up (a trained-like state): varied scores and maps
        g = torch.Generator().manual_seed(5)
        for p in det.prompts.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    save_prompts(root / "prompts.safetensors", det.prompts, {"backbone": "S2SW-Tiny-4L"})
    spec = ScorerSpec.detector("S2SW-Tiny-4L", None, root / "prompts.safetensors", image_size=SIZE)
    return root, imgs, spec


@pytest.fixture(scope="module")
def local_rows(data):
    """The local engine's rows (results.json), the reference."""
    root, imgs, spec = data
    summary = predict_files(spec.build(), [imgs], root / "local", threshold=THRESHOLD, batch_size=8,
                            progress=False)
    return summary.rows


def _rows(out):
    return read_results(out).to_pylist()


def assert_same_rows(rows, ref):
    assert [r["path"] for r in rows] == [r["path"] for r in ref]
    worst = 0.0
    for r, q in zip(rows, ref):
        for f in RESULT_FIELDS:
            if f in FLOATS and q[f] is not None:
                worst = max(worst, abs(r[f] - q[f]))
            else:
                assert r[f] == q[f], (f, r, q)
    assert worst <= 1e-6


def test_local_reference_is_not_trivial(local_rows):
    codes = sorted(r["error_code"] for r in local_rows if r["error"])
    assert codes == ["corrupt", "empty", "not_an_image", "not_an_image", "unreadable"]
    scored = [r for r in local_rows if r["error"] is None]
    assert len(scored) == N_GOOD
    assert 0 < sum(r["anomalous"] for r in scored) < N_GOOD  # both decisions occur
    assert any(0 < r["map_frac_above"] < 1 for r in scored)
    assert {r["overlay"] for r in scored} >= {"overlays/good__000.png", "overlays/good__000_2.png"}


def test_ray_rows_equal_local_rows(cluster, data, local_rows, tmp_path):
    root, imgs, spec = data
    out = tmp_path / "ray"
    s = predict_ray(spec, [imgs], out, threshold=THRESHOLD, batch_size=8, workers=2, cpus_per_worker=0.5,
                    shard_rows=64, progress=False)
    assert (s.n_scored, s.n_failed, s.n_new, s.n_already_done) == (N_GOOD, 5, N_GOOD + 5, 0)
    rows = _rows(out)
    assert_same_rows(rows, local_rows)
    assert len({r["path"] for r in rows}) == len(rows)
    shards = sorted((out / "results").glob("part-*.parquet"))
    assert len(shards) >= (N_GOOD + 5) // 64  # committed as it went, not at the end
    for r in rows:  # overlays written for scored rows only, same PNGs as the local engine's
        if r["overlay"] is not None:
            assert (out / r["overlay"]).read_bytes() == (root / "local" / r["overlay"]).read_bytes()
    assert sorted(os.listdir(out / "overlays")) == sorted(os.listdir(root / "local" / "overlays"))
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["n_rows"], summary["n_scored"], summary["threshold"]) == (N_GOOD + 5, N_GOOD, THRESHOLD)
    # the same command again: nothing to score, nothing written
    before = {p.name: p.stat().st_mtime_ns for p in shards}
    again = predict_ray(spec, [imgs], out, threshold=THRESHOLD, batch_size=8, shard_rows=64, progress=False)
    assert (again.n_new, again.n_already_done) == (0, N_GOOD + 5)
    assert {p.name: p.stat().st_mtime_ns for p in (out / "results").glob("part-*.parquet")} == before


def test_resume_after_the_driver_is_killed(cluster, data, local_rows, tmp_path):
    """The driver joins the module's cluster as a subprocess and is SIGKILLed once it has
    committed two shards; the same command again scores only what is missing."""
    root, imgs, spec = data
    out = tmp_path / "ray"
    cmd = [sys.executable, "-m", "s2swclip.cli", "predict", str(imgs), "--out", str(out), "--engine", "ray",
           "--ray-address", cluster, "--backbone", "S2SW-Tiny-4L", "--weights", "none",
           "--prompts", str(root / "prompts.safetensors"), "--image-size", str(SIZE),
           "--threshold", str(THRESHOLD), "--batch-size", "4", "--shard-rows", "16", "--quiet"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 240
    try:
        while len(list((out / "results").glob("part-*.parquet"))) < 2:
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            assert time.monotonic() < deadline, "the driver committed no shard in time"
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    first = committed_paths(out)
    assert 32 <= len(first) < N_GOOD + 5
    (out / "results" / ".part-x-00009.parquet.a1b2c3d4.tmp").write_bytes(b"half a shard")  # as fileio names them
    (out / "overlays" / ".good__001.png.e5f6a7b8.tmp").write_bytes(b"half an overlay")
    s = predict_ray(spec, [imgs], out, threshold=THRESHOLD, batch_size=8, workers=1, shard_rows=64,
                    progress=False)
    assert s.n_already_done == len(first) and s.n_new == N_GOOD + 5 - len(first)
    assert not list((out / "results").glob(".*.tmp")) and not list((out / "overlays").glob(".*.tmp"))
    rows = _rows(out)
    assert len({r["path"] for r in rows}) == len(rows) == N_GOOD + 5  # nothing twice, nothing missing
    assert_same_rows(rows, local_rows)


def test_manifest_with_missing_paths_gives_rows_with_errors(cluster, data, tmp_path):
    root, imgs, spec = data
    listed = sorted(str(p) for p in (imgs / "good").glob("*.png"))[:6]
    manifest = tmp_path / "list.txt"
    manifest.write_text("\n".join(listed + ["nowhere/a.png", str(imgs / "good" / "999.png")]) + "\n")
    s = predict_ray(spec, [manifest], tmp_path / "out", batch_size=4, overlays=False, progress=False)
    assert (s.n_scored, s.n_failed) == (6, 2)
    rows = {r["path"]: r for r in _rows(tmp_path / "out")}
    for missing in (str(tmp_path / "nowhere" / "a.png"), str(imgs / "good" / "999.png")):
        assert rows[missing]["error_code"] == "missing" and missing in rows[missing]["error"]
        assert rows[missing]["score"] is None
    assert all(rows[p]["score"] is not None and rows[p]["anomalous"] is None for p in listed)
    assert not (tmp_path / "out" / "overlays").exists()


def test_unusable_uris_are_rows_and_the_run_resumes(cluster, data, tmp_path, caplog):
    """foo:// and an unreachable hdfs:// store in a manifest: rows with their error_code, the rest
    scored, one warning per store; the rerun finds everything done instead of failing again."""
    import logging

    root, imgs, spec = data
    listed = sorted(str(p) for p in (imgs / "good").glob("*.png"))[:3]
    odd = ["foo://bucket/x.png", "foo://bucket/y.png", "hdfs://127.0.0.1:1/d/1.png", "hdfs://127.0.0.1:1/d/2.png"]
    manifest = tmp_path / "list.txt"
    manifest.write_text("\n".join(listed + odd) + "\n")
    with caplog.at_level(logging.WARNING, logger="s2swclip"):
        s = predict_ray(spec, [manifest], tmp_path / "out", batch_size=4, overlays=False, progress=False)
    assert (s.n_scored, s.n_failed) == (3, 4)
    rows = {r["path"]: r for r in _rows(tmp_path / "out")}
    assert [rows[p]["error_code"] for p in odd] == ["unsupported_uri"] * 2 + ["unreadable"] * 2
    assert all(rows[p]["score"] is not None for p in listed)
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warned) == 2 and all("input(s) are rows with error_code" in w for w in warned), warned
    again = predict_ray(spec, [manifest], tmp_path / "out", batch_size=4, overlays=False, progress=False)
    assert (again.n_new, again.n_already_done, again.n_failed) == (0, 7, 4)


def test_calibrated_threshold_is_recorded_and_reused(cluster, data, tmp_path):
    root, imgs, spec = data
    good, new = tmp_path / "good", tmp_path / "new"
    for folder, files in ((good, sorted((imgs / "scratch" / "deep").glob("*"))[:12]),
                          (new, sorted((imgs / "good").glob("*"))[:10])):
        folder.mkdir()
        for f in files:
            (folder / f.name).symlink_to(f)
    s = predict_ray(spec, [new], tmp_path / "out", calibrate_dir=good, fpr=0.2, batch_size=8,
                    overlays=False, progress=False)
    ref = predict_files(spec.build(), [new], tmp_path / "local", calibrate_dir=good, fpr=0.2,
                        batch_size=8, overlays=False, progress=False)
    assert s.calibration == ref.calibration and s.calibration.n == 12 and s.threshold == ref.threshold
    record = json.loads((tmp_path / "out" / "results" / "_run.json").read_text())
    assert record["calibration"]["threshold"] == s.threshold
    assert_same_rows(_rows(tmp_path / "out"), [dict(r, overlay=None) for r in ref.rows])
    # resumed (here: nothing left), the recorded calibration is used, not recomputed
    (good / sorted(os.listdir(good))[0]).unlink()
    again = predict_ray(spec, [new], tmp_path / "out", calibrate_dir=good, fpr=0.2, overlays=False, progress=False)
    assert again.calibration == s.calibration and again.n_new == 0


def test_another_runs_settings_are_refused(cluster, data, tmp_path):
    root, imgs, spec = data
    predict_ray(spec, [imgs / "crack"], tmp_path / "out", batch_size=8, overlays=False, progress=False)
    with pytest.raises(S2SWError, match=r"holds results of a different run \(threshold: None there, 0.5 now\)"):
        predict_ray(spec, [imgs / "crack"], tmp_path / "out", threshold=0.5, overlays=False, progress=False)
    other = spec.replace(image_size=64)
    with pytest.raises(S2SWError, match="different run .*scorer"):
        predict_ray(other, [imgs / "crack"], tmp_path / "out", overlays=False, progress=False)


def test_a_worker_that_cannot_load_the_model_is_one_error(cluster, data, tmp_path):
    root, imgs, _ = data
    spec = ScorerSpec.detector("S2SW-Tiny-4L", "no-such-tag", None, image_size=SIZE)  # passes check()
    with pytest.raises(S2SWError) as err:
        predict_ray(spec, [imgs / "crack"], tmp_path / "out", overlays=False, progress=False)
    msg = str(err.value)
    assert msg.startswith("scoring worker: weights 'no-such-tag' is neither a file") and "\n" not in msg, msg
    assert err.value.fields == ("weights",)  # kept from the worker's error: the command line shows --weights
    assert committed_paths(tmp_path / "out") == set()


def test_few_shot_ray_rows_equal_local_rows(cluster, data, tmp_path):
    """--reference through the Ray engine: every worker builds the same bank as the local engine."""
    from s2swclip.inference.references import apply_references

    root, imgs, _ = data
    spec = ScorerSpec.detector("S2SW-Tiny-4L", None, root / "prompts.safetensors", image_size=SIZE,
                               reference=imgs / "good", shots=3, few_shot_weight=0.7)
    subset = sorted((imgs / "crack").glob("0*.png"))[:12]
    scorer = spec.build()
    assert scorer.detector.num_references == 3 and scorer.detector.config.few_shot_weight == 0.7
    local = predict_files(scorer, subset, tmp_path / "local", threshold=THRESHOLD, progress=False).rows
    plain = s2swclip.load_detector("S2SW-Tiny-4L", None, root / "prompts.safetensors", image_size=SIZE)
    plain_rows = predict_files(ScorerSpec.detector("S2SW-Tiny-4L", None, root / "prompts.safetensors",
                                                   image_size=SIZE).build(), subset, tmp_path / "plain",
                               threshold=THRESHOLD, progress=False).rows
    assert max(abs(a["score"] - b["score"]) for a, b in zip(local, plain_rows)) > 1e-3  # references matter
    apply_references(plain, imgs / "good", shots=3)  # the same bank as the spec's
    assert all(torch.equal(a, b) for a, b in zip(plain.references.banks, scorer.detector.references.banks))
    s = predict_ray(spec, subset, tmp_path / "ray", threshold=THRESHOLD, batch_size=4, workers=1,
                    cpus_per_worker=0.5, progress=False)
    assert s.n_scored == len(subset)
    assert_same_rows(_rows(tmp_path / "ray"), local)


# ------------------------------------------------------------------- exported models (--model DIR)
@pytest.fixture(scope="module")
def exported(data):
    """The module's detector (its prompts, 56 px) exported to ONNX, with the threshold recorded."""
    from s2swclip.deploy.export import export_detector

    root, _, spec = data
    out = root / "exported"
    export_detector(spec.build().detector, out, format="onnx", threshold=THRESHOLD)
    return out


def _exported_inputs(imgs):
    """20 inputs: 16 images and the four broken files of crack/."""
    broken = [imgs / "crack" / n for n in ("empty.png", "short.jpg", "text.png", "truncated.png")]
    return sorted((imgs / "good").glob("*.png"))[:16] + broken


def test_exported_model_ray_rows_equal_local_rows(cluster, data, exported, local_rows, tmp_path, capsys):
    """--engine ray --model DIR: each actor loads the exported model once; the rows are the local
    engine's with the same model, through the API and the CLI (threshold recorded at export)."""
    from s2swclip.cli import main

    root, imgs, _ = data
    inputs = _exported_inputs(imgs)
    spec = ScorerSpec.exported(exported)
    local = predict_files(spec.build(), inputs, tmp_path / "local", threshold=THRESHOLD, batch_size=8,
                          progress=False).rows
    assert sum(r["error"] is None for r in local) == 16 and any(0 < (r["map_frac_above"] or 0) < 1 for r in local)
    pytorch = {r["path"]: r for r in local_rows}  # the same model: the PyTorch rows, to float drift
    for r in local:
        if r["error"] is None:
            assert abs(r["score"] - pytorch[r["path"]]["score"]) <= 1e-5
    s = predict_ray(spec, inputs, tmp_path / "ray", threshold=THRESHOLD, batch_size=4, workers=2,
                    cpus_per_worker=0.5, progress=False)
    assert (s.n_scored, s.n_failed) == (16, 4)
    assert_same_rows(_rows(tmp_path / "ray"), local)
    for r in local:  # the overlays too (a threshold: the fixed scale is the same everywhere)
        if r["overlay"] is not None:
            assert (tmp_path / "ray" / r["overlay"]).read_bytes() == (tmp_path / "local" / r["overlay"]).read_bytes()
    assert main(["predict", *map(str, inputs), "--out", str(tmp_path / "cli"), "--engine", "ray", "--model",
                 str(exported), "--batch-size", "4", "--quiet"]) == 0
    capsys.readouterr()
    assert json.loads((tmp_path / "cli" / "summary.json").read_text())["threshold"] == THRESHOLD  # the export's
    assert_same_rows(_rows(tmp_path / "cli"), local)


def test_exported_spec_reads_the_manifest_and_notices_a_new_export(exported, tmp_path):
    import hashlib
    import shutil

    spec = ScorerSpec.exported(exported)
    digest = hashlib.sha256((exported / "s2swclip.json").read_bytes()).hexdigest()
    assert spec.describe() == {"kind": "exported", "model": str(exported), "manifest_sha256": digest}
    assert spec.image_size() == SIZE
    spec.check()
    copy = tmp_path / "copy"
    shutil.copytree(exported, copy)
    before = ScorerSpec.exported(copy)
    manifest = json.loads((copy / "s2swclip.json").read_text())
    from s2swclip.deploy.runtime.manifest import seal_manifest

    (copy / "s2swclip.json").write_text(json.dumps(seal_manifest(dict(manifest, threshold=0.1))))  # a valid, other one
    with pytest.raises(S2SWError, match="changed since this run was planned"):
        before.build()
    assert ScorerSpec.exported(copy).build().threshold == 0.1
    with pytest.raises(S2SWError, match="runs on the CPU"):
        spec.replace(device="cuda").check()  # what the engine asks of it with --gpus-per-worker


def test_exported_spec_builds_without_torch(exported):
    """A worker of an exported model needs no torch: build and score with torch unimportable."""
    code = ("import json, sys\n"
            "sys.modules['torch'] = None  # import torch raises ImportError\n"
            "sys.modules['open_clip'] = None\n"
            "import numpy as np\n"
            "from s2swclip.inference.spec import ScorerSpec\n"
            "spec = ScorerSpec.exported(sys.argv[1])\n"
            "spec.check()\n"
            "scorer = spec.build()\n"
            "x = np.random.default_rng(0).standard_normal((2, 3, spec.image_size(), spec.image_size()))\n"
            "scores, maps = scorer.score(x.astype(np.float32))\n"
            "print(json.dumps({'scores': scores.tolist(), 'map_scale': scorer.map_scale,\n"
            "                  'torch': [m for m in sys.modules if m.split('.')[0] in ('torch', 'open_clip')\n"
            "                            and sys.modules[m] is not None]}))\n")
    out = subprocess.run([sys.executable, "-c", code, str(exported)], capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, PYTHONPATH=SRC))
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["torch"] == [] and got["map_scale"] == 4.0
    x = np.random.default_rng(0).standard_normal((2, 3, SIZE, SIZE)).astype(np.float32)
    want, _ = ScorerSpec.exported(exported).build().score(x)
    np.testing.assert_allclose(got["scores"], want, rtol=0, atol=1e-7)
