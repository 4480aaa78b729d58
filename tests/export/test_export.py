"""``s2swclip export``: the whole detector to ONNX / OpenVINO, its manifest, parity and drift.

Exports of the tiny backbone (tests/export_fixtures.py) take about a minute each; each kind is
made once per session.
"""

import json
import resource

import numpy as np
import pytest
import torch

from s2swclip.data.images import OPENAI_MEAN, OPENAI_STD, decode_for_model
from s2swclip.deploy.runtime import load_exported
from export_fixtures import ONNX_SIZE, ONNX_THRESHOLD
from helpers import make_images

pytestmark = pytest.mark.slow

TOL_SCORES, TOL_MAPS = 1e-5, 1e-4  # the fp32 parity targets


def _assert_parity(model, det, images):
    got = model.predict(images.numpy())
    want = det.predict(images)
    assert got.image_scores.shape == (len(images),) and got.anomaly_maps.shape == tuple(want.anomaly_maps.shape)
    assert got.image_scores.dtype == np.float32 and got.anomaly_maps.dtype == np.float32
    ds = np.abs(got.image_scores - want.image_scores.numpy()).max()
    dm = np.abs(got.anomaly_maps - want.anomaly_maps.numpy()).max()
    assert ds <= TOL_SCORES and dm <= TOL_MAPS, (ds, dm)
    return got


def test_cli_onnx_export_writes_model_and_manifest(onnx_export, onnx_detector, export_images):
    folder, stdout = onnx_export
    assert sorted(p.name for p in folder.iterdir()) == ["model.onnx", "s2swclip.json"]
    assert not any(p.name.startswith(".") for p in folder.parent.iterdir())  # no temporary left over
    m = json.loads((folder / "s2swclip.json").read_text())
    assert (m["format"], m["precision"], m["image_size"], m["threshold"]) == ("onnx", "fp32", ONNX_SIZE, ONNX_THRESHOLD)
    assert m["input"]["mean"] == list(OPENAI_MEAN) and m["input"]["std"] == list(OPENAI_STD)
    assert m["detector_config"] == onnx_detector.config.to_dict()
    assert m["provenance"]["backbone"] == "S2SW-Tiny-4L" and m["provenance"]["weights"] is None
    assert m["provenance"]["versions"]["torch"] == torch.__version__
    assert [s["model"] for s in m["stages"]] == ["model.onnx"]
    d = m["drift"]
    assert (d["images"], d["n_images"]) == ("calibration", 3)
    assert 0 <= d["max_abs_score"] <= TOL_SCORES and 0 <= d["max_abs_map"] <= TOL_MAPS
    # the peak resident memory of this process at the end of the export: never above its peak now
    peak_now = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    assert m["export"]["seconds"] > 0 and 0 < m["export"]["peak_rss_mib"] <= peak_now
    # the command prints the drift it measured
    assert f"max |d score| {d['max_abs_score']:.2e}, max |d map| {d['max_abs_map']:.2e}" in stdout
    # ... and it is what the runtime gives on the calibration images today
    model = load_exported(folder)
    paths = sorted(export_images.iterdir())
    pixels = np.stack([decode_for_model(p, ONNX_SIZE).pixels for p in paths])
    want = onnx_detector.predict(torch.from_numpy(pixels))
    got = model.predict(pixels)
    assert abs(np.abs(got.anomaly_maps - want.anomaly_maps.numpy()).max() - d["max_abs_map"]) < 1e-6


def test_onnx_parity_and_dynamic_batch(onnx_export, onnx_detector):
    model = load_exported(onnx_export[0])
    assert model.image_size == ONNX_SIZE and model.threshold == ONNX_THRESHOLD
    images = make_images(3, ONNX_SIZE, seed=11)
    batch = _assert_parity(model, onnx_detector, images)
    one = model.predict(images[1:2].numpy())  # another batch size, same graph
    np.testing.assert_allclose(one.anomaly_maps[0], batch.anomaly_maps[1], rtol=0, atol=1e-6)
    np.testing.assert_allclose(one.image_scores[0], batch.image_scores[1], rtol=0, atol=1e-7)


def test_onnx_graph_multiplies_by_matrices_only(onnx_export):
    """Every MatMul of the ONNX graph has a right operand of rank >= 2: ONNX Runtime runs a product
    by a 1-D vector as one tiny product per row (the wavelet filters that way took 0.5 s of
    0.8 s per 518 px image); the wavelet's [L, 2] filter matrix is one GEMM."""
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load(str(onnx_export[0] / "model.onnx")))
    ranks = {t.name: len(t.dims) for t in model.graph.initializer}
    for v in [*model.graph.value_info, *model.graph.input]:
        if v.type.tensor_type.HasField("shape"):
            ranks[v.name] = len(v.type.tensor_type.shape.dim)
    matmuls = [n for n in model.graph.node if n.op_type == "MatMul"]
    right = {n.name: ranks.get(n.input[1]) for n in matmuls}
    assert len(matmuls) > 20 and None not in right.values(), right
    assert min(right.values()) >= 2, {k: r for k, r in right.items() if r < 2}


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_openvino_parity_dynamic_batch_and_manifest(openvino_exports, shallow_detector, precision):
    folder = openvino_exports(precision)
    assert sorted(p.name for p in folder.iterdir()) == ["encoder.bin", "encoder.xml", "head.bin", "head.xml",
                                                         "s2swclip.json"]
    m = json.loads((folder / "s2swclip.json").read_text())
    assert (m["format"], m["precision"], m["image_size"], m["threshold"]) == ("openvino", precision, 224, None)
    # the encoder carries the precision, the scoring head stays float32
    assert [(s["name"], s["inference_precision"]) for s in m["stages"]] == [
        ("encoder", "bf16" if precision == "bf16" else "fp32"), ("head", "fp32")]
    assert m["stages"][0]["outputs"] == ["global_features", "patch_features_0"]  # aliased layers: one tensor
    assert (m["drift"]["images"], m["drift"]["n_images"]) == ("random", 4)
    model = load_exported(folder)
    effective = model.describe()["inference_precision"]
    assert effective[1] == "fp32"
    images = make_images(3, 224, seed=12)
    if effective[0] == "fp32":  # fp32, or bf16 on a CPU without bfloat16 (OpenVINO then runs f32)
        assert m["drift"]["max_abs_score"] <= TOL_SCORES and m["drift"]["max_abs_map"] <= TOL_MAPS
        batch = _assert_parity(model, shallow_detector, images)
    else:  # real bfloat16: a measured, recorded, bounded drift
        assert 0 < m["drift"]["max_abs_map"] < 0.5
        batch = model.predict(images.numpy())
    two = model.predict(images[:2].numpy())
    np.testing.assert_allclose(two.anomaly_maps, batch.anomaly_maps[:2], rtol=0, atol=1e-5)


def test_openvino_int8_is_quantised_and_drift_recorded(openvino_exports, shallow_detector, export_images):
    folder = openvino_exports("int8")
    m = json.loads((folder / "s2swclip.json").read_text())
    assert m["precision"] == "int8" and m["provenance"]["versions"].get("nncf")
    assert "FakeQuantize" in (folder / "encoder.xml").read_text()  # NNCF placed int8 quantisers
    assert "FakeQuantize" not in (folder / "head.xml").read_text()  # the head stays float32
    d = m["drift"]
    assert (d["images"], d["n_images"]) == ("calibration", 3)
    assert 0 < d["max_abs_map"] < 1 and 0 <= d["max_abs_score"] < 0.2  # quantised: not exact, but close
    # the recorded drift is the runtime's difference from PyTorch fp32 on the calibration images
    model = load_exported(folder)
    pixels = np.stack([decode_for_model(p, 224).pixels for p in sorted(export_images.iterdir())])
    got = np.concatenate([model.predict(pixels[i:i + 1]).anomaly_maps for i in range(len(pixels))])
    want = shallow_detector.predict(torch.from_numpy(pixels)).anomaly_maps.numpy()
    assert abs(np.abs(got - want).max() - d["max_abs_map"]) < 1e-5


def test_peak_rss_is_read_in_kib_and_recorded_in_mib(monkeypatch):
    """Linux's getrusage reports ru_maxrss in KiB; the manifest records whole MiB."""
    from types import SimpleNamespace

    from s2swclip.deploy.export import exporter

    monkeypatch.setattr(resource, "getrusage", lambda who: SimpleNamespace(ru_maxrss=3 * 1024 * 1024 + 1023))
    assert exporter._peak_rss_mib() == 3072
