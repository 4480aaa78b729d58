"""``s2swclip export`` mistakes: one ``error:`` line, exit 2, before any model is loaded."""

import pytest

from helpers import user_error  # noqa: E402
from export_fixtures import write_pngs

TINY = ["--backbone", "S2SW-Tiny-4L", "--weights", "none", "--image-size", "112"]


def test_request_mistakes(capsys, tmp_path, monkeypatch):
    def no_model_load(*a, **k):
        raise AssertionError("the model must not be loaded for a request that cannot work")

    monkeypatch.setattr("s2swclip.model.factory.load_detector", no_model_load)
    out = str(tmp_path / "out")
    user_error(capsys, ["export", "--format", "openvino", "--precision", "int8", "--out", out, *TINY],
                "precision int8 needs calibrate_dir (--precision, --calibrate); give it a folder")
    user_error(capsys, ["export", "--format", "onnx", "--precision", "bf16", "--out", out, *TINY],
                "precision bf16 is made with OpenVINO, ONNX exports are fp32 (--precision); "
                "use format openvino (--format)")
    user_error(capsys, ["export", "--format", "tensorrt", "--out", out, *TINY], "--format", "invalid choice")
    user_error(capsys, ["export", "--format", "onnx", "--out", out, "--calibrate", str(tmp_path / "none"), *TINY],
                "calibrate_dir (--calibrate):", "not found")
    user_error(capsys, ["export", "--format", "onnx", "--out", out, "--device", "cuda", *TINY], "--device")
    full = tmp_path / "full"
    write_pngs(full, 1)
    user_error(capsys, ["export", "--format", "onnx", "--out", str(full), *TINY],
               f"out_dir {full} is not empty (--out); export into a new or empty folder")
    (tmp_path / "file").write_text("x")
    user_error(capsys, ["export", "--format", "onnx", "--out", str(tmp_path / "file"), *TINY], "is an existing file")
    user_error(capsys, ["export", "--out", out, *TINY], "--format")
    assert not (tmp_path / "out").exists()


def test_few_shot_request_mistakes(capsys, tmp_path, monkeypatch):
    def no_model_load(*a, **k):
        raise AssertionError("the model must not be loaded for a request that cannot work")

    monkeypatch.setattr("s2swclip.model.factory.load_detector", no_model_load)
    out = str(tmp_path / "out")
    base = ["export", "--format", "onnx", "--out", out, *TINY]
    user_error(capsys, [*base, "--reference", str(tmp_path / "none")], "input not found")
    user_error(capsys, [*base, "--shots", "2"], "--shots only applies to the few-shot mode: add --reference DIR")
    user_error(capsys, [*base, "--few-shot-weight", "1"], "--few-shot-weight only applies to the few-shot mode")
    user_error(capsys, [*base, "--reference", str(tmp_path), "--coreset", "0"], "--coreset", "(0, 1]")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flags", [["--reference", "good/"], ["--shots", "2"], ["--few-shot-weight", "0.3"],
                                   ["--coreset", "0.5"], ["--reference", "good/", "--few-shot-weight", "1"]])
def test_model_refuses_few_shot_flags(capsys, tmp_path, flags):
    """predict/serve --model: references are baked in at export; the flags are refused before anything
    is read (the folder need not exist)."""
    model = str(tmp_path / "exported")
    images = tmp_path / "images"
    write_pngs(images, 1)
    for argv in (["predict", "--model", model, str(images), "--out", str(tmp_path / "out"), *flags],
                 ["predict", "--engine", "ray", "--model", model, str(images), "--out", str(tmp_path / "out"),
                  *flags],
                 ["serve", "--model", model, "--port", "0", *flags]):
        user_error(capsys, argv, f"{flags[0]}", f"cannot be used with --model {model}",
                    "references are baked in at export", "s2swclip export --reference DIR")
    assert not (tmp_path / "out").exists()


def test_ray_engine_model_mistakes(capsys, tmp_path):
    """--engine ray --model DIR: the same refusals as the local engine, and no GPUs (CPU runtimes)."""
    model = str(tmp_path / "exported")
    images = tmp_path / "images"
    write_pngs(images, 1)
    base = ["predict", "--engine", "ray", "--model", model, str(images), "--out", str(tmp_path / "out")]
    user_error(capsys, [*base, "--backbone", "ViT-B-16"], "drop --backbone")
    user_error(capsys, [*base, "--gpus-per-worker", "1"], "runs on the CPU", "drop --gpus-per-worker")
    user_error(capsys, base, f"model {model} (--model): no such folder")
    assert not (tmp_path / "out").exists()
