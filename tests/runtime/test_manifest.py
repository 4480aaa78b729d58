"""An exported folder is untrusted input: every way s2swclip.json can be wrong is one clear error."""

import copy
import json
import os

import pytest

from s2swclip.data.images import OPENAI_MEAN, OPENAI_STD
from s2swclip.errors import S2SWError
from s2swclip.deploy.runtime.manifest import MANIFEST_NAME, check_manifest, file_record, read_manifest


def _folder(tmp_path, fmt="onnx"):
    d = tmp_path / "model"
    d.mkdir()
    names = ["model.onnx"] if fmt == "onnx" else ["encoder.xml", "encoder.bin", "head.xml", "head.bin"]
    for i, n in enumerate(names):
        (d / n).write_bytes(bytes([i]) * (100 + i))
    if fmt == "onnx":
        stages = [{"name": "detector", "model": "model.onnx", "weights": None, "inputs": ["images"],
                   "outputs": ["image_scores", "anomaly_maps"], "inference_precision": "fp32"}]
    else:
        stages = [{"name": "encoder", "model": "encoder.xml", "weights": "encoder.bin", "inputs": ["images"],
                   "outputs": ["global_features", "patch_features_0"], "inference_precision": "bf16"},
                  {"name": "head", "model": "head.xml", "weights": "head.bin",
                   "inputs": ["global_features", "patch_features_0"], "outputs": ["image_scores", "anomaly_maps"],
                   "inference_precision": "fp32"}]
    manifest = {
        "schema": "s2swclip-export", "schema_version": 1, "format": fmt, "precision": "fp32", "image_size": 224,
        "input": {"name": "images", "layout": "NCHW", "dtype": "float32", "mean": list(OPENAI_MEAN),
                  "std": list(OPENAI_STD), "resize": "bicubic"},
        "outputs": {"scores": "image_scores", "maps": "anomaly_maps"},
        "stages": stages, "files": {n: file_record(d / n) for n in names},
        "detector_config": {"image_size": 224}, "threshold": 0.5, "map_scale": 4.0, "references": None, "provenance": {"backbone": "x"}, "drift": None,
    }
    (d / MANIFEST_NAME).write_text(json.dumps(manifest))
    return d, manifest


def _write(d, manifest):
    (d / MANIFEST_NAME).write_text(json.dumps(manifest))


@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_valid_folder_reads(tmp_path, fmt):
    d, manifest = _folder(tmp_path, fmt)
    assert read_manifest(d) == manifest


REFERENCES = {"count": 3, "few_shot_weight": 0.5, "layers": [6, 12, 18, 24], "stream": "plain", "coreset": None,
              "bank_rows": [192] * 4, "bank_bytes": 4 * 192 * 768 * 4, "source": "/data/good", "shots": None,
              "sha256": "0" * 64}


def _with_references(mutate):
    def apply(m):
        m["references"] = copy.deepcopy(REFERENCES)
        mutate(m)
    return apply


def test_references_record_reads(tmp_path):
    d, manifest = _folder(tmp_path)
    for ref in (REFERENCES, dict(REFERENCES, coreset=0.25, shots=2, source=None, sha256=None, few_shot_weight=1)):
        _write(d, dict(manifest, references=ref))
        assert read_manifest(d)["references"] == ref


def _mutations():
    def setter(path, value):
        def apply(m):
            target = m
            for key in path[:-1]:
                target = target[key]
            if value is KeyError:
                del target[path[-1]]
            else:
                target[path[-1]] = value
        return apply

    return [
        ("schema", setter(["schema"], "something-else"), "not an s2swclip export manifest"),
        ("version", setter(["schema_version"], 2), "schema_version 2 is not supported"),
        ("format", setter(["format"], "tensorrt"), "format 'tensorrt'"),
        ("precision", setter(["precision"], "fp8"), "precision"),
        ("size-type", setter(["image_size"], "224"), "image_size has the wrong type"),
        ("size-bool", setter(["image_size"], True), "image_size has the wrong type"),
        ("size-range", setter(["image_size"], 100000), "outside"),
        ("mean", setter(["input", "mean"], [0.5, 0.5]), "input.mean"),
        ("threshold", setter(["threshold"], "high"), "threshold"),
        ("no-stages", setter(["stages"], []), "1 to 4 stages"),
        ("traversal", setter(["stages", 0, "model"], "../model.onnx"), "plain file name"),
        ("absolute", setter(["stages", 0, "model"], "/etc/passwd.onnx"), "plain file name"),
        ("hidden", setter(["stages", 0, "model"], ".model.onnx"), "plain file name"),
        ("extension", setter(["stages", 0, "model"], "model.py"), "not a onnx model file"),
        ("unlisted", setter(["stages", 0, "model"], "other.onnx"), "not listed in 'files'"),
        ("input", setter(["stages", 0, "inputs"], ["pixels"]), "needs 'pixels'"),
        ("output", setter(["outputs", "maps"], "heatmaps"), "no stage produces the output 'heatmaps'"),
        ("stage-precision", setter(["stages", 0, "inference_precision"], "int4"), "inference_precision"),
        ("files-record", setter(["files", "model.onnx", "sha256"], "xyz"), "sha256"),
        ("missing-key", setter(["provenance"], KeyError), "has no 'provenance'"),
        ("no-map-scale", setter(["map_scale"], KeyError), "has no 'map_scale'"),
        ("map-scale-zero", setter(["map_scale"], 0), "map_scale must be a number in [0.001, 1000]"),
        ("map-scale-negative", setter(["map_scale"], -2.5), "map_scale must be a number in [0.001, 1000]"),
        ("map-scale-type", setter(["map_scale"], "4"), "map_scale has the wrong type"),
        ("map-scale-bool", setter(["map_scale"], True), "map_scale has the wrong type"),
        ("no-references", setter(["references"], KeyError), "has no 'references'"),
        ("references-type", setter(["references"], [1]), "references must be null or an object"),
        *[(f"references-{name}", _with_references(setter(["references", *key], value)), message)
          for name, key, value, message in [
              ("count", ["count"], 0, "references.count must be at least 1"),
              ("weight", ["few_shot_weight"], 1.5, "references.few_shot_weight must be in [0, 1]"),
              ("layers", ["layers"], [], "references.layers must be a non-empty list"),
              ("layer-type", ["layers", 0], "6", "references.layers must be a non-empty list"),
              ("rows", ["bank_rows"], [64, 64], "one positive row count per layer"),
              ("stream", ["stream"], "other", "references.stream must be 'plain' or 'dpam'"),
              ("coreset", ["coreset"], 2.0, "references.coreset must be null or a fraction"),
              ("no-coreset", ["coreset"], KeyError, "references has no 'coreset'"),
              ("shots", ["shots"], 0, "references.shots must be null or at least 1"),
              ("source", ["source"], 7, "references.source has the wrong type"),
              ("sha256", ["sha256"], "abc", "references.sha256 must be null or a hex SHA-256"),
              ("bytes", ["bank_bytes"], -1, "references.bank_bytes must be >= 0"),
          ]],
    ]


@pytest.mark.parametrize("name,mutate,message", _mutations(), ids=[m[0] for m in _mutations()])
def test_invalid_manifests_are_one_line_errors(tmp_path, name, mutate, message):
    d, manifest = _folder(tmp_path)
    bad = copy.deepcopy(manifest)
    mutate(bad)
    _write(d, bad)
    with pytest.raises(S2SWError) as e:
        read_manifest(d)
    text = str(e.value)
    assert "\n" not in text and str(d) in text and message in text, text
    with pytest.raises(ValueError):
        check_manifest(bad)


def test_map_scale_must_be_finite(tmp_path):
    _, manifest = _folder(tmp_path)
    assert check_manifest(manifest)["map_scale"] == 4.0
    for value in (float("inf"), float("nan")):  # not JSON, but check_manifest also checks dicts
        m = dict(manifest, map_scale=value)
        with pytest.raises(ValueError, match="map_scale has the wrong type"):
            check_manifest(m)


def test_folder_problems(tmp_path):
    with pytest.raises(S2SWError, match="no such folder"):
        read_manifest(tmp_path / "missing")
    with pytest.raises(S2SWError, match="no s2swclip.json in this folder"):
        read_manifest(tmp_path)
    d, manifest = _folder(tmp_path)
    for text, message in [("{not json", "not valid JSON"), ('{"a": NaN}', "NaN is not valid JSON"),
                          ("[1, 2]", "not a JSON object"), ("\xff", "not valid JSON")]:
        (d / MANIFEST_NAME).write_bytes(text.encode("latin-1"))
        with pytest.raises(S2SWError, match=message):
            read_manifest(d)
    (d / MANIFEST_NAME).write_bytes(b" " * 1_000_001)
    with pytest.raises(S2SWError, match="larger than"):
        read_manifest(d)


def test_model_files_are_checked(tmp_path):
    d, manifest = _folder(tmp_path)
    model = d / "model.onnx"
    good = model.read_bytes()
    model.write_bytes(good[:-1])
    with pytest.raises(S2SWError, match="has 99 bytes, the manifest says 100"):
        read_manifest(d)
    model.write_bytes(b"\x07" + good[1:])  # same size, other content
    with pytest.raises(S2SWError, match="does not match its SHA-256"):
        read_manifest(d)
    assert read_manifest(d, verify_files=False)["format"] == "onnx"  # sizes only
    model.unlink()
    with pytest.raises(S2SWError, match="model file model.onnx is missing"):
        read_manifest(d)
    outside = tmp_path / "elsewhere.onnx"
    outside.write_bytes(good)
    os.symlink(outside, model)  # a link to a file outside the folder is refused
    with pytest.raises(S2SWError, match="not a regular file"):
        read_manifest(d)


@pytest.mark.parametrize("text,message", [
    ('"map_scale": 1e-320', r"map_scale must be a number in \[0.001, 1000\]"),
    ('"map_scale": 1e999', "out of range"),
    ('"provenance": {"backbone": 1e999}', "out of range"),
    ('"threshold": -1e999', "out of range"),
])
def test_manifest_numbers_are_finite_and_in_range(tmp_path, text, message):
    d, manifest = _folder(tmp_path)
    key = text.split(":")[0].strip('"')
    raw = json.dumps(dict(manifest, **{key: "PLACEHOLDER"})).replace(f'"{key}": "PLACEHOLDER"', text)
    (d / MANIFEST_NAME).write_text(raw)
    with pytest.raises(S2SWError, match=message):
        read_manifest(d)


def test_reference_counts_are_bounded(tmp_path):
    d, manifest = _folder(tmp_path)
    manifest["references"] = dict(REFERENCES, count=10**30)
    _write(d, manifest)
    with pytest.raises(S2SWError, match="references.count must be at least 1 and at most"):
        read_manifest(d)
