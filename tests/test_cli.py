"""The command line as a new user meets it: results, and one clear line for each mistake."""

import json
import os
import subprocess
import sys

import numpy as np
import torch
import pytest
from PIL import Image

from s2swclip.cli import main

TINY = ["--backbone", "S2SW-Tiny-24L", "--weights", "none", "--image-size", "224"]


def _png(path, seed=0, size=(96, 80)):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _assert_user_error(code, err, *needles):
    assert code == 2
    lines = [line for line in err.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.fixture
def images(tmp_path):
    d = tmp_path / "imgs"
    (d / "sub").mkdir(parents=True)
    _png(d / "a.png", 1)
    _png(d / "b.jpg", 2)
    _png(d / "sub" / "c.bmp", 3)
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (d / "notes.txt").write_text("not an image")
    return d


def test_predict_folder_skips_corrupt_and_writes_results(capsys, tmp_path, images):
    out = tmp_path / "out"
    code, stdout, err = _run(capsys, "predict", str(images), "--out", str(out), "--threshold", "0.5",
                             "--quiet", *TINY)
    assert code == 0
    assert "skipped" in err and "broken.png" in err
    summary = json.loads((out / "results.json").read_text())
    assert summary["n_scored"] == 3 and summary["n_failed"] == 1
    scored = [r for r in summary["results"] if r["error"] is None]
    assert all(0 <= r["score"] <= 1 and r["anomalous"] == (r["score"] > 0.5) for r in scored)
    assert sorted(os.listdir(out / "overlays")) == ["a.png", "b.png", "sub__c.png"]
    assert (out / "results.csv").read_text().splitlines()[0] == "path,name,score,anomalous,overlay,error"
    assert "sub/c.bmp" in stdout
    assert "3 scored, 1 skipped" in stdout


def test_predict_calibrated_threshold_flags_at_most_fpr(capsys, tmp_path, images):
    good = tmp_path / "good"
    good.mkdir()
    for i in range(10):
        _png(good / f"g{i}.png", 100 + i)
    out = tmp_path / "out"
    code, _, err = _run(capsys, "predict", str(good), "--out", str(out), "--calibrate", str(good),
                        "--fpr", "0.2", "--no-overlays", "--quiet", *TINY)
    assert code == 0 and "calibrated threshold" in err
    summary = json.loads((out / "results.json").read_text())
    flagged = sum(r["anomalous"] for r in summary["results"])
    assert flagged <= 2
    assert not (out / "overlays").exists()


def test_predict_glob(capsys, tmp_path, images):
    code, stdout, _ = _run(capsys, "predict", str(images / "*.png"), "--out", str(tmp_path / "o"),
                           "--quiet", *TINY)
    assert code == 0 and "1 scored, 1 skipped" in stdout


@pytest.mark.parametrize("case", ["missing", "empty_dir", "not_image"])
def test_predict_input_errors(capsys, tmp_path, case):
    if case == "missing":
        target, needle = tmp_path / "nope", "input not found"
    elif case == "empty_dir":
        target = tmp_path / "empty"
        target.mkdir()
        needle = "no images found"
    else:
        target = tmp_path / "x.png"
        target.write_text("hello")
        needle = "could be read"
    code, _, err = _run(capsys, "predict", str(target), "--out", str(tmp_path / "o"), "--quiet", *TINY)
    _assert_user_error(code, err, needle)


def test_bad_meta_json(capsys, tmp_path):
    (tmp_path / "meta.json").write_text("{not json")
    code, _, err = _run(capsys, "test", "--data", str(tmp_path), "--out", str(tmp_path / "r"), *TINY)
    _assert_user_error(code, err, "meta.json")


def test_wrong_checkpoint(capsys, tmp_path, images):
    import torch

    bogus = tmp_path / "clip_weights.pth"
    torch.save({"visual.proj": torch.zeros(2, 2)}, bogus)
    code, _, err = _run(capsys, "predict", str(images), "--out", str(tmp_path / "o"), "--prompts", str(bogus), *TINY)
    _assert_user_error(code, err, "clip_weights.pth", "not a prompt checkpoint")


def test_weights_unavailable_offline(capsys, tmp_path, images, monkeypatch):
    import open_clip

    monkeypatch.setattr(open_clip, "download_pretrained", lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))
    code, _, err = _run(capsys, "predict", str(images), "--out", str(tmp_path / "o"))
    _assert_user_error(code, err, "ViT-L-14-336px.pt", "--weights PATH")


def test_unusable_image_size(capsys, tmp_path, images):
    code, _, err = _run(capsys, "predict", str(images), "--out", str(tmp_path / "o"), "--backbone",
                        "S2SW-Tiny-24L", "--weights", "none", "--image-size", "10")
    _assert_user_error(code, err, "image size 10")


def test_missing_weights_file(capsys, tmp_path, images):
    code, _, err = _run(capsys, "predict", str(images), "--out", str(tmp_path / "o"), "--backbone",
                        "S2SW-Tiny-24L", "--weights", str(tmp_path / "w.pt"))
    _assert_user_error(code, err, "weights file not found", "w.pt")


def test_build_meta_wrong_layout(capsys, tmp_path):
    code, _, err = _run(capsys, "build-meta", "mvtec", str(tmp_path))
    _assert_user_error(code, err, str(tmp_path))


def test_test_command_writes_report(capsys, tmp_path):
    from s2swclip.data.synthetic import generate_dataset

    root = generate_dataset(tmp_path / "syn", classes=["marble", "nut"], n_train_good=1, n_test_good=3,
                            n_test_defect=3, image_size=96, seed=2)
    out = tmp_path / "rep"
    code, stdout, _ = _run(capsys, "test", "--data", root, "--out", str(out), "--figures", "1",
                           "--aupro", "grid200", "--quiet", *TINY)
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["aupro_method"] == "grid200" and set(report["classes"]) == {"marble", "nut"}
    keys = {"image_auroc", "image_ap", "image_f1max", "pixel_auroc", "pixel_ap", "pixel_f1max", "pixel_aupro"}
    assert set(report["mean"]) == keys and all(0 <= v <= 1 for v in report["mean"].values())
    assert "| marble" in stdout
    assert len(list((out / "figures" / "nut").glob("*.png"))) == 1


def test_console_script_exit_status_and_no_traceback(tmp_path):
    r = subprocess.run([sys.executable, "-m", "s2swclip.cli", "predict", str(tmp_path / "missing"),
                        "--out", str(tmp_path / "o"), *TINY], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().startswith("error: input not found") and "Traceback" not in r.stderr


def test_train_command_from_a_checkpoint(capsys, tmp_path):
    from s2swclip.data.synthetic import generate_dataset
    from s2swclip.model.checkpoint import load_prompts

    root = generate_dataset(tmp_path / "syn", classes=["pill"], n_train_good=1, n_test_good=2,
                            n_test_defect=2, image_size=96, seed=4)
    code, stdout, _ = _run(capsys, "train", "--data", root, "--out", str(tmp_path / "a"), "--epochs", "1",
                           "--batch-size", "2", "--quiet", *TINY)
    assert code == 0 and "prompts_last.safetensors" in stdout
    first = tmp_path / "a" / "prompts_last.safetensors"
    code, _, _ = _run(capsys, "train", "--data", root, "--out", str(tmp_path / "b"), "--epochs", "1",
                      "--batch-size", "2", "--lr", "0", "--prompts", str(first), "--quiet", *TINY)
    assert code == 0  # lr 0: fine-tuning from the checkpoint leaves it unchanged
    a, b = load_prompts(first).tensors, load_prompts(tmp_path / "b" / "prompts_last.safetensors").tensors
    assert all(torch.equal(a[k], b[k]) for k in a)
