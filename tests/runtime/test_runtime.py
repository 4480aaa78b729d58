"""The torch-free runtime: predict on arrays and files, the Scorer protocol, untrusted folders,
and ``predict --model`` / ``serve --model`` running in a process where torch cannot be imported."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

import s2swclip
from s2swclip.cli import build_parser, main
from s2swclip.cli.serve import build_serve_app
from s2swclip.data.images import decode_for_model
from s2swclip.errors import S2SWError
from s2swclip.inference.pipeline import InferencePipeline
from s2swclip.deploy.runtime import load_exported
from s2swclip.deploy.runtime.manifest import seal_manifest
from helpers import user_error  # noqa: E402
from export_fixtures import ONNX_SIZE, ONNX_THRESHOLD, write_pngs

pytestmark = pytest.mark.slow

SRC = str(Path(s2swclip.__file__).resolve().parent.parent)

# Run in a child: importing torch (or anything that needs it) fails there.
BLOCK_TORCH = textwrap.dedent("""
    import sys
    class _NoTorch:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "torchvision", "open_clip"):
                raise ImportError(f"torch is blocked in this test (import of {name})")
    sys.meta_path.insert(0, _NoTorch())
""")


def _run_torch_free(code: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=SRC)
    return subprocess.run([sys.executable, "-c", BLOCK_TORCH + textwrap.dedent(code), *args], env=env,
                          capture_output=True, text=True, timeout=300)


def test_predict_files_equals_pytorch_predict(onnx_export, onnx_detector, export_images):
    model = s2swclip.load_exported(onnx_export[0])  # the package root's lazy name
    paths = sorted(export_images.iterdir())
    got = model.predict_files(paths, batch_size=2)
    pixels = np.stack([decode_for_model(p, ONNX_SIZE).pixels for p in paths])  # the PyTorch path's input
    want = onnx_detector.predict(torch.from_numpy(pixels))
    np.testing.assert_allclose(got.image_scores, want.image_scores.numpy(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(got.anomaly_maps, want.anomaly_maps.numpy(), rtol=0, atol=1e-4)
    assert got.anomaly_maps.shape == (3, ONNX_SIZE, ONNX_SIZE)


def test_runtime_never_imports_torch(onnx_export, export_images):
    """Load, predict on arrays and on files, and the pipeline, with torch unimportable."""
    result = _run_torch_free("""
        import json, sys
        import numpy as np
        from s2swclip.deploy.runtime import load_exported
        from s2swclip.inference.pipeline import InferencePipeline
        model = load_exported(sys.argv[1])
        out = model.predict_files(sorted(__import__("glob").glob(sys.argv[2] + "/*.png")))
        recs = list(InferencePipeline(model, batch_size=2).run([(p, p) for p in sorted(
            __import__("glob").glob(sys.argv[2] + "/*.png"))]))
        x = np.zeros((2, 3, model.image_size, model.image_size), np.float32)
        print(json.dumps({"scores": out.image_scores.tolist(), "pipeline": [r.score for r in recs],
                          "zeros": model.predict(x).image_scores.tolist(),
                          "torch": [m for m in sys.modules if m.split(".")[0] in ("torch", "open_clip")]}))
    """, str(onnx_export[0]), str(export_images))
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout)
    assert got["torch"] == []
    want = load_exported(onnx_export[0]).predict_files(sorted(export_images.iterdir()))
    np.testing.assert_allclose(got["scores"], want.image_scores, rtol=0, atol=1e-7)
    np.testing.assert_allclose(got["pipeline"], want.image_scores, rtol=0, atol=1e-7)
    assert len(got["zeros"]) == 2


def test_openvino_runtime_never_imports_torch(openvino_exports):
    folder = openvino_exports("fp32")
    result = _run_torch_free("""
        import json, sys
        import numpy as np
        from s2swclip.deploy.runtime import load_exported
        model = load_exported(sys.argv[1])
        x = np.random.default_rng(0).standard_normal((2, 3, model.image_size, model.image_size)).astype(np.float32)
        out = model.predict(x)
        print(json.dumps({"maps": out.anomaly_maps[:, ::16, ::16].tolist(), "engine": model.describe()["engine"],
                          "torch": [m for m in sys.modules if m.split(".")[0] in ("torch", "open_clip")]}))
    """, str(folder))
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout)
    assert (got["engine"], got["torch"]) == ("openvino", [])
    x = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)
    want = load_exported(folder).predict(x).anomaly_maps[:, ::16, ::16]
    np.testing.assert_allclose(got["maps"], want, rtol=0, atol=1e-6)


def test_cli_predict_and_serve_with_model_are_torch_free(onnx_export, export_images, tmp_path):
    out = tmp_path / "out"
    result = _run_torch_free("""
        import sys
        from fastapi.testclient import TestClient
        from s2swclip.cli import build_parser, main
        from s2swclip.cli.serve import build_serve_app
        code = main(["predict", "--model", sys.argv[1], sys.argv[2], "--out", sys.argv[3], "--quiet"])
        app = build_serve_app(build_parser().parse_args(["serve", "--model", sys.argv[1]]))
        with TestClient(app, base_url="http://127.0.0.1") as client:
            info = client.get("/v1/model").json()
            png = open(sorted(__import__("glob").glob(sys.argv[2] + "/*.png"))[0], "rb").read()
            r = client.post("/v1/predict", files=[("files", ("a.png", png, "image/png"))])
        print(code, info["engine"], r.status_code, r.json()["results"][0]["score"],
              [m for m in sys.modules if m.split(".")[0] == "torch"])
    """, str(onnx_export[0]), str(export_images), str(out))
    assert result.returncode == 0, result.stderr
    code, engine, status, score, torch_modules = result.stdout.strip().splitlines()[-1].split()
    assert (code, engine, status, torch_modules) == ("0", "onnxruntime", "200", "[]")
    rows = json.loads((out / "results.json").read_text())
    assert rows["threshold"] == ONNX_THRESHOLD  # the threshold recorded at export
    first = rows["results"][0]
    assert abs(first["score"] - float(score)) < 1e-6 and first["anomalous"] == (first["score"] > ONNX_THRESHOLD)
    assert len(list((out / "overlays").iterdir())) == 3


def test_cli_predict_model_matches_pytorch_cli(onnx_export, export_images, tmp_path, capsys):
    from export_fixtures import ONNX_ARGS

    assert main(["predict", "--model", str(onnx_export[0]), str(export_images), "--out", str(tmp_path / "a"),
                 "--threshold", "0.9", "--quiet"]) == 0
    assert main(["predict", *ONNX_ARGS, str(export_images), "--out", str(tmp_path / "b"), "--threshold", "0.9",
                 "--quiet"]) == 0
    a = json.loads((tmp_path / "a" / "results.json").read_text())
    b = json.loads((tmp_path / "b" / "results.json").read_text())
    assert a["threshold"] == b["threshold"] == 0.9  # --threshold wins over the recorded one
    for ra, rb in zip(a["results"], b["results"]):
        assert ra["name"] == rb["name"] and abs(ra["score"] - rb["score"]) < 1e-5
        assert abs(ra["map_max"] - rb["map_max"]) < 1e-4


def test_predict_model_rows_put_maps_on_the_score_scale(onnx_export, onnx_detector, export_images, tmp_path):
    """map_scale travels with the export: map_frac_above and the heat-map scale equal the PyTorch path's."""
    from export_fixtures import ONNX_ARGS

    model = load_exported(onnx_export[0])
    assert model.map_scale == onnx_detector.map_scale == 4.0  # four feature layers
    paths = sorted(export_images.iterdir())
    got = model.predict_files(paths).anomaly_maps / 4.0
    want = onnx_detector.predict(torch.from_numpy(np.stack([decode_for_model(p, ONNX_SIZE).pixels
                                                             for p in paths]))).anomaly_maps.numpy() / 4.0
    # a threshold inside every map's range (candidates between the maps' quantiles, whatever the
    # test backbone) at which no pixel lies within the export's float drift of it: both paths flag
    # the same pixels, so their fractions must agree exactly
    lo, hi = max(np.quantile(m, 0.3) for m in want), min(np.quantile(m, 0.7) for m in want)
    assert lo < hi, (lo, hi)
    threshold = next(t for t in np.round(np.linspace(lo, hi, 400), 4)
                     if np.array_equal(got > t, want > t) and all(0 < (m > t).mean() < 1 for m in want))
    assert main(["predict", "--model", str(onnx_export[0]), str(export_images), "--out", str(tmp_path / "a"),
                 "--threshold", str(threshold), "--quiet"]) == 0
    assert main(["predict", *ONNX_ARGS, str(export_images), "--out", str(tmp_path / "b"),
                 "--threshold", str(threshold), "--quiet"]) == 0
    a = json.loads((tmp_path / "a" / "results.json").read_text())
    b = json.loads((tmp_path / "b" / "results.json").read_text())
    for ra, rb, m in zip(a["results"], b["results"], want):
        assert abs(ra["map_frac_above"] - rb["map_frac_above"]) <= 1e-6, (ra, rb)
        assert abs(ra["map_frac_above"] - (m > threshold).mean()) <= 1e-6  # the definition, in NumPy
    assert a["heatmap"] == b["heatmap"] and a["heatmap"]["map_scale"] == 4.0  # same colour scale


def test_serve_model_reports_the_export(onnx_export):
    app = build_serve_app(build_parser().parse_args(["serve", "--model", str(onnx_export[0]), "--threshold", "0.2"]))
    with TestClient(app, base_url="http://127.0.0.1") as client:
        m = client.get("/v1/model").json()
    assert (m["engine"], m["format"], m["precision"], m["image_size"], m["threshold"]) == (
        "onnxruntime", "onnx", "fp32", ONNX_SIZE, 0.2)
    assert m["backbone"] == "S2SW-Tiny-4L" and m["untrained_prompts"] is True
    assert m["drift"]["images"] == "calibration"


def test_scorer_protocol_and_input_checks(onnx_export):
    model = load_exported(onnx_export[0])
    x = np.random.default_rng(0).standard_normal((2, 3, ONNX_SIZE, ONNX_SIZE)).astype(np.float32)
    scores, maps = model.score(x)
    assert scores.shape == (2,) and maps.shape == (2, ONNX_SIZE, ONNX_SIZE)
    recs = InferencePipeline(model, batch_size=2).run([])
    assert list(recs) == []
    for bad, msg in [(x[0], "must be an array"), (x[:, :, :100], "must be an array"),
                     (x.astype(np.int32), "floating point"), (x[:0], "must be an array")]:
        with pytest.raises(S2SWError, match=msg):
            model.predict(bad)
    with pytest.raises(S2SWError, match="at least one"):
        model.predict_files([])


def test_bad_model_folders_are_one_line_errors(onnx_export, export_images, tmp_path, capsys):
    out = str(tmp_path / "out")
    imgs = str(export_images)
    user_error(capsys, ["predict", "--model", str(tmp_path / "nope"), imgs, "--out", out], "no such folder")
    foreign = tmp_path / "foreign"
    write_pngs(foreign, 1)
    user_error(capsys, ["predict", "--model", str(foreign), imgs, "--out", out], "no s2swclip.json")
    user_error(capsys, ["serve", "--model", str(foreign), "--port", "0"], "no s2swclip.json")
    user_error(capsys, ["predict", "--model", str(onnx_export[0]), "--backbone", "ViT-B-16", imgs, "--out", out],
                "drop --backbone")
    # a corrupt model file with a consistent manifest: the runtime refuses to load it
    corrupt = tmp_path / "corrupt"
    shutil.copytree(onnx_export[0], corrupt)
    data = bytearray((corrupt / "model.onnx").read_bytes())
    data[len(data) // 2: len(data) // 2 + 64] = b"\xff" * 64
    (corrupt / "model.onnx").write_bytes(bytes(data))
    user_error(capsys, ["predict", "--model", str(corrupt), imgs, "--out", out], "SHA-256")
    (corrupt / "model.onnx").write_bytes(b"not an onnx model")
    manifest = json.loads((corrupt / "s2swclip.json").read_text())
    manifest["files"]["model.onnx"] = {"bytes": 17, "sha256": __import__("hashlib").sha256(b"not an onnx model").hexdigest()}
    (corrupt / "s2swclip.json").write_text(json.dumps(seal_manifest(manifest)))  # consistent, resealed
    user_error(capsys, ["predict", "--model", str(corrupt), imgs, "--out", out], "ONNX Runtime cannot load model.onnx")
    assert not os.path.exists(out)
