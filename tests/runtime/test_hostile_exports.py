"""Exported folders that look valid but are not: refused at load time before any work, or, at
run time, one row's error (non-finite results), one ``error:`` line (runtime failures) or a
bounded wait (a graph that never ends)."""

import json
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from s2swclip.cli import build_parser
from s2swclip.cli.serve import build_serve_app
from s2swclip.deploy.runtime import InferenceTimeout, load_exported
from s2swclip.deploy.runtime.manifest import MANIFEST_NAME
from s2swclip.errors import S2SWError

from export_fixtures import ONNX_SIZE
from helpers import run_cli, user_error
from hostile_models import endless_loop, failing_reshape, hostile_copy, nan_for_dark_images, wrong_map_shape

pytestmark = pytest.mark.slow


def _x(n=2, value=0.0):
    return np.full((n, 3, ONNX_SIZE, ONNX_SIZE), value, np.float32)


def test_an_edited_manifest_is_refused_by_its_own_digest(onnx_export, tmp_path):
    import shutil

    d = tmp_path / "edited"
    shutil.copytree(onnx_export[0], d)
    manifest = json.loads((d / MANIFEST_NAME).read_text())
    assert isinstance(manifest["manifest_sha256"], str)
    manifest["threshold"] = 0.01  # an edit by hand, digest not recomputed
    (d / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(S2SWError, match="does not match its manifest_sha256"):
        load_exported(d)


def test_an_old_export_without_the_digest_still_loads_with_a_warning(onnx_export, tmp_path, caplog):
    import shutil

    d = tmp_path / "old"
    shutil.copytree(onnx_export[0], d)
    manifest = json.loads((d / MANIFEST_NAME).read_text())
    del manifest["manifest_sha256"]
    (d / MANIFEST_NAME).write_text(json.dumps(manifest))
    assert load_exported(d).image_size == ONNX_SIZE
    assert any("no manifest_sha256" in r.getMessage() and "export the model again" in r.getMessage()
               for r in caplog.records)


@pytest.mark.parametrize("case", ["image_size", "output_shape"])
def test_a_manifest_that_does_not_match_its_model_is_refused_at_load(onnx_export, tmp_path, case):
    if case == "image_size":  # the real model, an edited (and resealed) image size
        d = hostile_copy(onnx_export[0], tmp_path / case, image_size=224)
        needle = "images is [?, 3, 280, 280], s2swclip.json (image_size 224) needs [B, 3, 224, 224]"
    else:  # a swapped model with other output shapes
        d = hostile_copy(onnx_export[0], tmp_path / case, wrong_map_shape())
        needle = "anomaly_maps is [?, 280], s2swclip.json (image_size 280) needs [B, 280, 280]"
    with pytest.raises(S2SWError) as e:
        load_exported(d)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_non_finite_results_are_that_rows_error(onnx_export, tmp_path, capsys):
    d = hostile_copy(onnx_export[0], tmp_path / "nan", nan_for_dark_images())
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    Image.new("RGB", (64, 64), (255, 255, 255)).save(imgs / "bright.png")
    Image.new("RGB", (64, 64), (0, 0, 0)).save(imgs / "dark.png")
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "predict", "--model", str(d), str(imgs), "--out", str(out), "--quiet")
    assert code == 0, err
    rows = {r["name"]: r for r in json.loads((out / "results.json").read_text())["results"]}
    assert rows["bright.png"]["score"] is not None and rows["bright.png"]["error"] is None
    assert rows["dark.png"]["score"] is None and rows["dark.png"]["error_code"] == "non_finite"
    # the service: the row's error, not a 500
    app = build_serve_app(build_parser().parse_args(["serve", "--model", str(d)]))
    with TestClient(app, base_url="http://127.0.0.1") as client:
        files = [("files", (n, (imgs / n).read_bytes(), "image/png")) for n in ("bright.png", "dark.png")]
        r = client.post("/v1/predict", files=files)
    assert r.status_code == 200, r.text
    by = {row["filename"]: row for row in r.json()["results"]}
    assert by["bright.png"]["ok"] and not by["dark.png"]["ok"] and by["dark.png"]["error_code"] == "non_finite"


def test_a_runtime_failure_is_one_error_line(onnx_export, export_images, tmp_path, capsys):
    d = hostile_copy(onnx_export[0], tmp_path / "fails", failing_reshape())
    model = load_exported(d)
    with pytest.raises(S2SWError, match="the runtime failed on a batch of 2 image"):
        model.predict(_x(2))
    user_error(capsys, ["predict", "--model", str(d), str(export_images), "--out", str(tmp_path / "o")],
               "the runtime failed on a batch")


def test_a_graph_that_never_ends_is_bounded_by_the_inference_timeout(onnx_export, export_images, tmp_path, capsys):
    d = hostile_copy(onnx_export[0], tmp_path / "loop", endless_loop())
    model = load_exported(d, inference_timeout=1.0)
    t = time.monotonic()
    with pytest.raises(InferenceTimeout, match="did not finish within inference_timeout 1 s; "):
        model.predict(_x(1))
    assert time.monotonic() - t < 60  # 1 s, plus the grace of the cancellation
    assert not model._stuck  # ONNX Runtime stopped the call: the model stays usable
    user_error(capsys, ["predict", "--model", str(d), str(export_images), "--out", str(tmp_path / "o"),
                        "--inference-timeout", "1"], "inference_timeout 1 s (--inference-timeout); raise it")
    with pytest.raises(S2SWError, match="^inference_timeout must be a positive number"):
        load_exported(d, inference_timeout=float("nan"))


def test_serve_answers_504_when_a_batch_runs_past_the_inference_timeout(onnx_export, export_images, tmp_path):
    from s2swclip.serve.app import create_app

    d = hostile_copy(onnx_export[0], tmp_path / "loop", endless_loop())
    app = create_app(load_exported(d, inference_timeout=1.0))  # no warm-up batch: the request's batch times out
    png = sorted(export_images.iterdir())[0]
    with TestClient(app, base_url="http://127.0.0.1") as client:
        r = client.post("/v1/predict", files=[("files", (png.name, png.read_bytes(), "image/png"))])
        assert r.status_code == 504 and "inference_timeout 1 s" in r.json()["detail"], r.text
        assert client.get("/v1/health").status_code == 200  # the service itself goes on


def test_ray_workers_build_the_exported_model_with_the_inference_timeout(onnx_export, export_images, tmp_path):
    """``predict --engine ray --model DIR --inference-timeout S``: each worker builds its model from
    the spec, so the spec carries the limit (not part of the run's identity: a resume with another
    limit is the same run)."""
    from s2swclip.inference.spec import ScorerSpec

    d = hostile_copy(onnx_export[0], tmp_path / "loop", endless_loop())
    spec = ScorerSpec.exported(d, inference_timeout=1.0)
    assert spec == ScorerSpec.exported(d, inference_timeout=300.0)
    model = spec.build()
    assert model.inference_timeout == 1.0
    with pytest.raises(InferenceTimeout, match="did not finish within inference_timeout 1 s; "):
        model.predict(_x(1))
    assert ScorerSpec.exported(d).build().inference_timeout == 300.0


def test_serve_with_a_model_that_never_ends_stops_at_its_warm_up_with_one_line(onnx_export, tmp_path, capsys):
    """The warm-up batch runs before the server starts: a looping graph ends ``serve`` with one
    error line naming --inference-timeout, not a failed start-up with a traceback."""
    import socket

    d = hostile_copy(onnx_export[0], tmp_path / "loop", endless_loop())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t = time.monotonic()
    user_error(capsys, ["serve", "--model", str(d), "--inference-timeout", "1", "--port", str(port)],
               "did not finish within inference_timeout 1 s (--inference-timeout)")
    assert time.monotonic() - t < 60
