"""``s2swclip export --reference``: the few-shot bank baked into the exported head, fp32 parity
with PyTorch ``predict`` (every few-shot configuration on the export graph, then one conversion
per format: ONNX with weight 0.5, OpenVINO with weight 1), the manifest's record of the
references, ``predict`` / ``serve --model`` on such a folder, and int8 with references.

The int8 export shares the OpenVINO fp32 export's conversion (the same detector, hence the same
graph: export_fixtures.shared_openvino_conversion); each export is made once per module.
"""

import contextlib
import hashlib
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

import s2swclip
from s2swclip.cli import build_parser, main
from s2swclip.cli.serve import build_serve_app
from s2swclip.data.images import decode_for_model
from s2swclip.deploy.export.exporter import ReferenceSource, references_record
from s2swclip.deploy.export.graph import DetectorGraph
from s2swclip.model.portable import portable_forms
from s2swclip.inference.references import apply_references
from s2swclip.deploy.runtime import load_exported
from export_fixtures import shared_openvino_conversion, write_pngs
from helpers import make_images

pytestmark = pytest.mark.slow

SIZE = 112  # 8 x 8 patches
TINY = ["--backbone", "S2SW-Tiny-4L", "--weights", "none", "--image-size", str(SIZE)]
TOL_SCORES, TOL_MAPS = 1e-5, 1e-4  # the fp32 parity targets

# name -> (format, few-shot weight, coreset, shots, references source: "folder" or "bank")
CONFIGS = {
    "onnx-0.5": ("onnx", 0.5, None, 2, "folder"),
    "onnx-1": ("onnx", 1.0, None, None, "folder"),
    "openvino-0.5": ("openvino", 0.5, 0.5, None, "folder"),
    "openvino-1": ("openvino", 1.0, None, None, "bank"),
}
#: the configurations converted (one per format): the others' graphs are checked in PyTorch
#: (test_graph_parity_with_references), where a conversion adds nothing the converted ones miss
EXPORTS = ("onnx-0.5", "openvino-1")


@pytest.fixture(scope="module")
def refs(tmp_path_factory):
    """Three known-good PNGs, and the same three as a references file (det.save_references)."""
    root = tmp_path_factory.mktemp("fewshot_refs")
    write_pngs(root / "good", 3, seed=20)
    det = s2swclip.load_detector("S2SW-Tiny-4L", None, None, image_size=SIZE, untrained_ok=True)
    apply_references(det, root / "good")
    det.save_references(root / "bank.safetensors")
    return root


def _reference_detector(refs: Path, name: str):
    """The PyTorch detector an export was made from, built through the API (not the CLI), and
    the manifest's record of its references."""
    _, weight, coreset, shots, source = CONFIGS[name]
    det = s2swclip.load_detector("S2SW-Tiny-4L", None, None, image_size=SIZE, untrained_ok=True,
                                 few_shot_weight=weight, coreset=coreset)
    source_arg = refs / "bank.safetensors" if source == "bank" else refs / "good"
    files = apply_references(det, source_arg, shots=shots)
    return det, references_record(det, ReferenceSource(source_arg, files, shots))


@pytest.fixture(scope="module")
def exports(tmp_path_factory, refs):
    """``s2swclip export ... --reference`` of each EXPORTS entry, made on first use:
    ``exports(name) -> (folder, stdout)``."""
    made = {}

    def get(name: str):
        assert name in EXPORTS
        if name not in made:
            fmt, weight, coreset, shots, source = CONFIGS[name]
            out = tmp_path_factory.mktemp(f"fewshot_{name}") / "model"
            argv = ["export", "--format", fmt, "--out", str(out), *TINY,
                    "--reference", str(refs / "bank.safetensors" if source == "bank" else refs / "good"),
                    "--few-shot-weight", str(weight), "--threshold", "0.55"]
            argv += ["--coreset", str(coreset)] if coreset is not None else []
            argv += ["--shots", str(shots)] if shots is not None else []
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf), shared_openvino_conversion():
                assert main(argv) == 0, buf.getvalue()
            made[name] = out, buf.getvalue()
        return made[name]

    return get


def _files(refs: Path, name: str) -> list[Path]:
    _, _, _, shots, source = CONFIGS[name]
    return [refs / "bank.safetensors"] if source == "bank" else sorted((refs / "good").iterdir())[:shots]


@pytest.mark.parametrize("name", list(CONFIGS))
def test_graph_parity_with_references(refs, name):
    """Every configuration's export graph (the portable forms the exporters trace) against
    ``predict``; and the record the manifest will hold."""
    fmt, weight, coreset, shots, source = CONFIGS[name]
    det, r = _reference_detector(refs, name)
    images = make_images(3, SIZE, seed=31)
    want = det.predict(images)
    assert want.few_shot_maps is not None
    graph = DetectorGraph(det).eval()
    with torch.no_grad(), portable_forms():
        outputs = graph.encoder(images)
        scores, maps = graph(images)
    ds = float((scores - want.image_scores).abs().max())
    dm = float((maps - want.anomaly_maps).abs().max())
    assert ds <= TOL_SCORES and dm <= TOL_MAPS, (ds, dm)
    # weight 1: neither the global nor the zero-shot patch features leave the encoder
    assert len(outputs) == (4 if weight == 1 else 2 + 4)
    # not the zero-shot model: the references change the result
    plain = s2swclip.load_detector("S2SW-Tiny-4L", None, None, image_size=SIZE, untrained_ok=True).predict(images)
    assert float((scores - plain.image_scores).abs().max()) > 1e-2
    # the references themselves are normal for the bank: with weight 1 their score is ~0
    if weight == 1:
        pixels = np.stack([decode_for_model(p, SIZE).pixels for p in sorted((refs / "good").iterdir())])
        with torch.no_grad(), portable_forms():
            assert float(graph(torch.from_numpy(pixels))[0].max()) < 1e-5
    assert det.map_scale == pytest.approx((1 - weight) * 4 + weight)
    # the manifest's record of the references
    files = _files(refs, name)
    digest = hashlib.sha256(b"".join(hashlib.sha256(f.read_bytes()).digest() for f in files)).hexdigest()
    count = 3 if source == "bank" else len(files)  # the bank file holds the three images' tokens
    tokens = (SIZE // 14) ** 2
    rows = math.ceil(coreset * count * tokens) if coreset else count * tokens
    assert r == {"count": count, "few_shot_weight": weight, "layers": [1, 2, 3, 4],
                 "stream": "plain", "coreset": coreset, "bank_rows": [rows] * 4, "bank_bytes": 4 * rows * 768 * 4,
                 "source": str(files[0] if source == "bank" else refs / "good"), "shots": shots, "sha256": digest}
    assert r["count"] == det.num_references and r["bank_rows"] == [b.shape[0] for b in det.references.banks]


@pytest.mark.parametrize("name", EXPORTS)
def test_fp32_parity_with_references(exports, refs, name):
    folder, stdout = exports(name)
    fmt, weight, coreset, shots, source = CONFIGS[name]
    det, _ = _reference_detector(refs, name)
    model = load_exported(folder)
    images = make_images(3, SIZE, seed=31)
    want = det.predict(images)
    got = model.predict(images.numpy())
    ds = float(np.abs(got.image_scores - want.image_scores.numpy()).max())
    dm = float(np.abs(got.anomaly_maps - want.anomaly_maps.numpy()).max())
    print(f"{name}: max |d score| {ds:.2e}, max |d map| {dm:.2e}")
    assert ds <= TOL_SCORES and dm <= TOL_MAPS, (ds, dm)
    one = model.predict(images[2:].numpy())  # the batch stays dynamic
    np.testing.assert_allclose(one.anomaly_maps[0], got.anomaly_maps[2], rtol=0, atol=1e-6)
    # the references themselves are normal for the bank: with weight 1 their score is ~0
    if weight == 1:
        pixels = np.stack([decode_for_model(p, SIZE).pixels for p in sorted((refs / "good").iterdir())])
        assert float(model.predict(pixels).image_scores.max()) < 1e-5
    m = json.loads((folder / "s2swclip.json").read_text())
    assert m["drift"]["max_abs_score"] <= TOL_SCORES and m["drift"]["max_abs_map"] <= TOL_MAPS
    assert f"with {shots or 3} reference images baked in (few-shot weight {weight})" in stdout
    assert model.map_scale == pytest.approx((1 - weight) * 4 + weight) == det.map_scale
    if fmt == "openvino":  # weight 1: neither the global nor the zero-shot patch features leave the encoder
        outputs = m["stages"][0]["outputs"]
        assert outputs == ([] if weight == 1 else ["global_features", "patch_features_0"]) + [
            f"patch_features_{i + (0 if weight == 1 else 1)}" for i in range(4)]
        assert m["stages"][1]["inputs"] == outputs


@pytest.mark.parametrize("name", EXPORTS)
def test_manifest_records_the_references(exports, refs, name):
    """What the export wrote is the record of its detector's references (checked for every
    configuration in test_graph_parity_with_references)."""
    folder, _ = exports(name)
    r = json.loads((folder / "s2swclip.json").read_text())["references"]
    det, record = _reference_detector(refs, name)
    assert r == record
    assert r["count"] == det.num_references and r["bank_rows"] == [b.shape[0] for b in det.references.banks]


def test_predict_and_serve_model_with_references(exports, refs, tmp_path):
    """The CLI round trip: export --reference, then predict --model gives the rows of predict
    --reference (PyTorch), and serve --model reports the references."""
    folder, _ = exports("onnx-0.5")
    queries = tmp_path / "queries"
    write_pngs(queries, 3, seed=40)
    assert main(["predict", "--model", str(folder), str(queries), "--out", str(tmp_path / "a"), "--quiet"]) == 0
    assert main(["predict", *TINY, str(queries), "--out", str(tmp_path / "b"), "--reference", str(refs / "good"),
                 "--shots", "2", "--threshold", "0.55", "--quiet"]) == 0
    a = json.loads((tmp_path / "a" / "results.json").read_text())
    b = json.loads((tmp_path / "b" / "results.json").read_text())
    assert a["threshold"] == b["threshold"] == 0.55  # recorded at export
    assert a["heatmap"] == b["heatmap"] and a["heatmap"]["map_scale"] == 2.5  # (1 - w) * 4 + w
    for ra, rb in zip(a["results"], b["results"]):
        assert ra["name"] == rb["name"] and ra["anomalous"] == rb["anomalous"]
        assert abs(ra["score"] - rb["score"]) <= TOL_SCORES and abs(ra["map_max"] - rb["map_max"]) <= TOL_MAPS
    app = build_serve_app(build_parser().parse_args(["serve", "--model", str(exports("openvino-1")[0])]))
    with TestClient(app, base_url="http://127.0.0.1") as client:
        m = client.get("/v1/model").json()
    assert m["references"]["count"] == 3 and m["references"]["few_shot_weight"] == 1.0
    assert m["references"]["source"] == str(refs / "bank.safetensors")
    assert m["untrained_prompts"] is False  # references only: the prompts play no part


def test_int8_with_references(exports, tmp_path, refs):
    """The encoder is quantised, the head (with the bank) stays float32, the drift is recorded.
    The detector is openvino-1's (a bank file, weight 1): its conversion is shared."""
    exports("openvino-1")  # made first: its conversion is the one quantised here
    out = tmp_path / "int8"
    with shared_openvino_conversion():
        assert main(["export", "--format", "openvino", "--precision", "int8", "--calibrate", str(refs / "good"),
                     "--out", str(out), *TINY, "--reference", str(refs / "bank.safetensors"), "--few-shot-weight",
                     "1", "--quiet"]) == 0
    m = json.loads((out / "s2swclip.json").read_text())
    assert m["precision"] == "int8" and m["references"]["count"] == 3
    assert "FakeQuantize" in (out / "encoder.xml").read_text()
    assert "FakeQuantize" not in (out / "head.xml").read_text()
    d = m["drift"]
    assert (d["images"], d["n_images"]) == ("calibration", 3)
    assert 0 < d["max_abs_map"] < 0.5 and 0 <= d["max_abs_score"] < 0.2  # quantised: close, not exact
    det, _ = _reference_detector(refs, "openvino-1")
    pixels = np.stack([decode_for_model(p, SIZE).pixels for p in sorted((refs / "good").iterdir())])
    got = np.concatenate([load_exported(out).predict(pixels[i:i + 1]).anomaly_maps for i in range(3)])
    assert abs(np.abs(got - det.predict(torch.from_numpy(pixels)).anomaly_maps.numpy()).max() - d["max_abs_map"]) < 1e-5
