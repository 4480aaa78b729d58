"""The command line as a new user meets it: results, and one clear line for each mistake."""

import json
import os
import subprocess
import sys

import numpy as np
import torch
import pytest
from PIL import Image

from helpers import assert_user_error, run_cli, write_png  # noqa: E402

TINY = ["--backbone", "S2SW-Tiny-24L", "--weights", "none", "--image-size", "224"]


@pytest.fixture
def images(tmp_path):
    d = tmp_path / "imgs"
    (d / "sub").mkdir(parents=True)
    write_png(d / "a.png", 1)
    write_png(d / "b.jpg", 2)
    write_png(d / "sub" / "c.bmp", 3)
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (d / "notes.txt").write_text("not an image")
    return d


def test_predict_folder_skips_corrupt_and_writes_results(capsys, tmp_path, images):
    out = tmp_path / "out"
    code, stdout, err = run_cli(capsys, "predict", str(images), "--out", str(out), "--threshold", "0.5",
                             "--quiet", *TINY)
    assert code == 0
    assert "skipped" in err and "broken.png" in err
    summary = json.loads((out / "results.json").read_text())
    assert summary["n_scored"] == 3 and summary["n_failed"] == 2  # broken.png, and notes.txt: every entry a row
    assert {r["name"]: r["error_code"] for r in summary["results"] if r["error"]} == {
        "broken.png": "not_an_image", "notes.txt": "not_an_image"}
    scored = [r for r in summary["results"] if r["error"] is None]
    assert all(0 <= r["score"] <= 1 and r["anomalous"] == (r["score"] > 0.5) for r in scored)
    assert sorted(os.listdir(out / "overlays")) == ["a.png", "b.png", "sub__c.png"]
    assert (out / "results.csv").read_text().splitlines()[0] == "path,name,score,anomalous,map_max,map_mean,map_frac_above,overlay,error,error_code"
    assert "sub/c.bmp" in stdout
    assert "3 scored, 2 skipped" in stdout


def test_predict_calibrated_threshold_flags_at_most_fpr(capsys, tmp_path, images):
    good = tmp_path / "good"
    good.mkdir()
    for i in range(10):
        write_png(good / f"g{i}.png", 100 + i)
    out = tmp_path / "out"
    code, stdout, err = run_cli(capsys, "predict", str(good), "--out", str(out), "--calibrate", str(good),
                             "--fpr", "0.2", "--no-overlays", "--quiet", *TINY)
    assert code == 0, err
    summary = json.loads((out / "results.json").read_text())
    # split-conformal rank: ceil((10 + 1) * (1 - 0.2)) = 9, so exactly the largest score is above
    cal = summary["calibration"]
    assert (cal["n"], cal["rank"]) == (10, 9) and abs(cal["bound"] - (1 - 9 / 11)) < 1e-12
    scores = sorted(r["score"] for r in summary["results"])
    assert summary["threshold"] == scores[8]
    assert sum(r["anomalous"] for r in summary["results"]) == 1 == cal["flagged"]
    assert "from 10 known-good images (rank 9 of 10)" in stdout
    assert not (out / "overlays").exists()


def test_predict_glob(capsys, tmp_path, images):
    code, stdout, _ = run_cli(capsys, "predict", str(images / "*.png"), "--out", str(tmp_path / "o"),
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
    code, _, err = run_cli(capsys, "predict", str(target), "--out", str(tmp_path / "o"), "--quiet", *TINY)
    assert_user_error(code, err, needle)


def test_bad_meta_json(capsys, tmp_path):
    (tmp_path / "meta.json").write_text("{not json")
    code, _, err = run_cli(capsys, "test", "--data", str(tmp_path), "--out", str(tmp_path / "r"), *TINY)
    assert_user_error(code, err, "meta.json")


def test_wrong_checkpoint(capsys, tmp_path, images):
    import torch

    bogus = tmp_path / "clip_weights.pth"
    torch.save({"visual.proj": torch.zeros(2, 2)}, bogus)
    code, _, err = run_cli(capsys, "predict", str(images), "--out", str(tmp_path / "o"), "--prompts", str(bogus), *TINY)
    assert_user_error(code, err, "clip_weights.pth", "not a prompt checkpoint")


def test_weights_unavailable_offline(capsys, tmp_path, images, monkeypatch):
    import open_clip

    monkeypatch.setattr(open_clip, "download_pretrained", lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))
    code, _, err = run_cli(capsys, "predict", str(images), "--out", str(tmp_path / "o"))
    assert_user_error(code, err, "ViT-L-14-336px.pt", "pass it as weights=PATH (--weights)")


def test_unusable_image_size(capsys, tmp_path, images):
    code, _, err = run_cli(capsys, "predict", str(images), "--out", str(tmp_path / "o"), "--backbone",
                        "S2SW-Tiny-24L", "--weights", "none", "--image-size", "10")
    assert_user_error(code, err, "image_size 10 is smaller than the backbone's 14-pixel patches (--image-size)")


def test_missing_weights_file(capsys, tmp_path, images):
    code, _, err = run_cli(capsys, "predict", str(images), "--out", str(tmp_path / "o"), "--backbone",
                        "S2SW-Tiny-24L", "--weights", str(tmp_path / "w.pt"))
    assert_user_error(code, err, "weights file not found", "w.pt")


def test_build_meta_wrong_layout(capsys, tmp_path):
    code, _, err = run_cli(capsys, "build-meta", "mvtec", str(tmp_path))
    assert_user_error(code, err, str(tmp_path))


def test_test_command_writes_report(capsys, tmp_path):
    from s2swclip.data.synthetic import generate_dataset

    root = generate_dataset(tmp_path / "syn", classes=["marble", "nut"], n_train_good=1, n_test_good=3,
                            n_test_defect=3, image_size=96, seed=2)
    out = tmp_path / "rep"
    code, stdout, _ = run_cli(capsys, "test", "--data", root, "--out", str(out), "--figures", "1",
                           "--aupro", "grid200", "--quiet", *TINY)
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["aupro_method"] == "grid200" and set(report["classes"]) == {"marble", "nut"}
    keys = {"image_auroc", "image_ap", "image_f1max", "pixel_auroc", "pixel_ap", "pixel_f1max", "pixel_aupro"}
    assert set(report["mean"]) == keys
    # the numbers are those of the detector on the dataset, computed here independently with sklearn
    import s2swclip
    from sklearn.metrics import average_precision_score, roc_auc_score

    from s2swclip.data.dataset import AnomalyDataset

    det = s2swclip.load_detector("S2SW-Tiny-24L", None, None, image_size=224, untrained_ok=True)
    ds = AnomalyDataset(root, image_size=224)
    for cls, idx in ds.class_indices().items():
        items = [ds[i] for i in idx]
        scores = det.predict(torch.stack([it["image"] for it in items])).image_scores.numpy()
        labels = [it["label"] for it in items]
        got = report["classes"][cls]
        assert abs(got["image_auroc"] - roc_auc_score(labels, scores)) < 1e-9
        assert abs(got["image_ap"] - average_precision_score(labels, scores)) < 1e-9
    mean_auroc = np.mean([report["classes"][c]["image_auroc"] for c in ("marble", "nut")])
    assert abs(report["mean"]["image_auroc"] - mean_auroc) < 1e-12
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
    code, stdout, _ = run_cli(capsys, "train", "--data", root, "--out", str(tmp_path / "a"), "--epochs", "1",
                           "--batch-size", "2", "--quiet", *TINY)
    assert code == 0 and "prompts_last.safetensors" in stdout
    first = tmp_path / "a" / "prompts_last.safetensors"
    code, _, _ = run_cli(capsys, "train", "--data", root, "--out", str(tmp_path / "b"), "--epochs", "1",
                      "--batch-size", "2", "--max-batches", "0", "--prompts", str(first), "--quiet", *TINY)
    assert code == 0  # no step: starting from the checkpoint leaves it unchanged
    a, b = load_prompts(first).tensors, load_prompts(tmp_path / "b" / "prompts_last.safetensors").tensors
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_predict_every_entry_is_a_row_under_its_own_name(capsys, tmp_path):
    d = tmp_path / "line"
    d.mkdir()
    write_png(d / "a.png", 1)
    frames = [Image.fromarray(np.full((40, 50, 3), v, np.uint8)) for v in (30, 220)]
    frames[0].save(d / "anim.gif", save_all=True, append_images=frames[1:])
    os.symlink(d / "a.png", d / "same1.png")
    os.symlink(d / "a.png", d / "same2.png")
    os.symlink(d / "gone.png", d / "dangling.png")
    (d / "=cmd()+1.png").write_bytes((d / "a.png").read_bytes())
    out = tmp_path / "out"
    code, stdout, err = run_cli(capsys, "predict", str(d), "--out", str(out), "--quiet", *TINY)
    assert code == 0, err
    rows = json.loads((out / "results.json").read_text())["results"]
    assert [r["name"] for r in rows] == ["=cmd()+1.png", "a.png", "anim.gif", "dangling.png", "same1.png", "same2.png"]
    by = {r["name"]: r for r in rows}
    assert by["anim.gif"]["error"] is None and by["anim.gif"]["score"] is not None  # GIF: first frame
    assert "broken symbolic link" in by["dangling.png"]["error"] and "dangling.png" in err
    assert by["same1.png"]["score"] == pytest.approx(by["a.png"]["score"], abs=1e-6)
    assert by["same2.png"]["score"] == pytest.approx(by["a.png"]["score"], abs=1e-6)
    assert "5 scored, 1 skipped" in stdout
    csv_lines = (out / "results.csv").read_text().splitlines()
    assert any(line.split(",")[1] == "'=cmd()+1.png" for line in csv_lines[1:])  # no formula in a spreadsheet
    assert sorted(os.listdir(out / "overlays")) == ["_cmd___1.png", "a.png", "anim.png", "same1.png", "same2.png"]


@pytest.mark.parametrize("argv,needle", [
    (["--threshold", "nan"], "--threshold"),
    (["--threshold", "inf"], "--threshold"),
    (["--batch-size", "0"], "--batch-size"),
    (["--fpr", "1.5"], "--fpr"),
])
def test_predict_bad_numbers(capsys, tmp_path, images, argv, needle):
    out = tmp_path / "o"
    code, _, err = run_cli(capsys, "predict", str(images), "--out", str(out), *argv, *TINY)
    assert_user_error(code, err, needle)
    assert not out.exists()


@pytest.mark.parametrize("command", ["predict", "demo", "test"])
def test_out_that_is_a_file_is_refused_before_any_work(capsys, tmp_path, images, command):
    target = tmp_path / "taken.txt"
    target.write_text("keep me")
    argv = {"predict": ["predict", str(images), "--out", str(target), *TINY],
            "demo": ["demo", "--out", str(target)],
            "test": ["test", "--data", str(tmp_path), "--out", str(target), *TINY]}[command]
    code, _, err = run_cli(capsys, *argv)
    assert_user_error(code, err, "taken.txt", "not a folder")
    assert target.read_text() == "keep me"


def test_predict_reports_other_files_and_fifos_by_name_and_never_blocks(tmp_path):
    d = tmp_path / "mixed"
    d.mkdir()
    write_png(d / "a.png", 1)
    (d / "notes.txt").write_text("not an image")
    os.mkfifo(d / "pipe.png")
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "s2swclip.cli", "predict", str(d), "--out", str(out), "--quiet",
                        *TINY], capture_output=True, text=True, timeout=300)  # a FIFO read would block for ever
    assert r.returncode == 0, r.stderr
    by = {row["name"]: row for row in json.loads((out / "results.json").read_text())["results"]}
    assert sorted(by) == ["a.png", "notes.txt", "pipe.png"]
    assert by["a.png"]["score"] is not None
    assert by["notes.txt"]["error_code"] == "not_an_image" and "notes.txt" in by["notes.txt"]["error"]
    assert by["pipe.png"]["error_code"] == "not_a_regular_file" and "FIFO" in by["pipe.png"]["error"]


@pytest.mark.parametrize("size,needles", [
    ("100000", ["image_size 100000 gives a 7142x7142 patch grid", "(--image-size); use at most image_size 1344"]),
    ("30000", ["image_size 30000", "(--image-size); use at most image_size 1344"]),
])
def test_an_image_size_beyond_the_position_table_is_one_line(capsys, tmp_path, images, size, needles):
    code, _, err = run_cli(capsys, "predict", str(images), "--out", str(tmp_path / "o"), "--quiet",
                           "--backbone", "S2SW-Tiny-24L", "--weights", "none", "--image-size", size)
    assert_user_error(code, err, *needles)
    assert not (tmp_path / "o").exists()


def test_an_image_size_beyond_the_memory_is_one_line(capsys, tmp_path, images, monkeypatch):
    import s2swclip.arrays

    # 1344 px: 96 x 96 patches, 9217 tokens; one head: 3 x 9217^2 float32 attention entries = 1.0 GB
    monkeypatch.setattr(s2swclip.arrays, "available_memory", lambda: 2**29)
    code, _, err = run_cli(capsys, "predict", str(images), "--out", str(tmp_path / "o"), "--quiet",
                           "--backbone", "S2SW-Tiny-24L", "--weights", "none", "--image-size", "1344")
    assert_user_error(code, err, "image_size 1344 (--image-size): one image needs about 1.0 GiB", "9217 tokens",
                      "only 0.5 GiB")
