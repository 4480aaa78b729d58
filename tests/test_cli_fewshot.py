"""The few-normal-shot mode on the command line: predict --reference, test --shots, and one clear
line for each mistake."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from s2swclip.data.synthetic import generate_dataset
from helpers import assert_user_error, run_cli, write_png  # noqa: E402

TINY = ["--backbone", "S2SW-Tiny-24L", "--weights", "none", "--image-size", "112"]


@pytest.fixture
def refs(tmp_path):
    d = tmp_path / "good"
    d.mkdir()
    for i in range(3):
        write_png(d / f"g{i}.png", seed=i)
    return d


def _results(out):
    return {r["name"]: r for r in json.loads((out / "results.json").read_text())["results"]}


def test_predict_with_references_only(capsys, tmp_path, refs):
    """--few-shot-weight 1: no prompts, no warning about them; a reference scores 0, another
    image does not; only the first --shots images (sorted) are references."""
    other = tmp_path / "new.png"
    write_png(other, seed=50)
    out = tmp_path / "out"
    code, stdout, err = run_cli(capsys, "predict", str(refs), str(other), "--out", str(out), "--reference", str(refs),
                             "--shots", "2", "--few-shot-weight", "1", *TINY)
    assert code == 0, err
    assert "untrained" not in err and "few-shot mode: 2 reference images" in err
    rows = _results(out)
    assert rows["good/g0.png"]["score"] < 1e-6 and rows["good/g1.png"]["score"] < 1e-6
    assert rows["good/g2.png"]["score"] > 0.05 and rows["new.png"]["score"] > 0.05


def test_predict_references_are_prepared_like_queries(capsys, tmp_path, refs):
    """A reference in another format and size, EXIF-rotated, still matches itself: it went through the
    same decoding as the image scored."""
    img = Image.fromarray(np.random.default_rng(7).integers(0, 255, (60, 90, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    one = tmp_path / "one"
    one.mkdir()
    img.save(one / "x.jpg", exif=exif, quality=95)
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "predict", str(one / "x.jpg"), "--out", str(out), "--reference", str(one),
                        "--few-shot-weight", "1", *TINY)
    assert code == 0, err
    assert _results(out)["x.jpg"]["score"] < 1e-6


def test_predict_fused_default_weight(capsys, tmp_path, refs):
    """Default weight 0.5: the score is halfway between the zero-shot and the few-shot score."""
    img = tmp_path / "q.png"
    write_png(img, seed=60)
    scores = {}
    for name, extra in (("zs", []), ("fs1", ["--reference", str(refs), "--few-shot-weight", "1"]),
                        ("fused", ["--reference", str(refs)])):
        code, _, err = run_cli(capsys, "predict", str(img), "--out", str(tmp_path / name), *extra, *TINY)
        assert code == 0, err
        scores[name] = _results(tmp_path / name)["q.png"]["score"]
    assert scores["fused"] == pytest.approx(0.5 * scores["zs"] + 0.5 * scores["fs1"], abs=2e-6)


def test_predict_with_a_references_file(capsys, tmp_path, refs):
    import s2swclip
    from s2swclip.inference.references import read_reference_images

    det = s2swclip.load_detector("S2SW-Tiny-24L", None, None, image_size=112, untrained_ok=True)
    det.set_references(torch.from_numpy(read_reference_images(refs, 112).pixels))
    bank = tmp_path / "bank.safetensors"
    det.save_references(bank)
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "predict", str(refs), "--out", str(out), "--reference", str(bank),
                        "--few-shot-weight", "1", *TINY)
    assert code == 0, err
    assert all(r["score"] < 1e-6 for r in _results(out).values())
    # made at another image size: one clear line
    code, _, err = run_cli(capsys, "predict", str(refs), "--out", str(out), "--reference", str(bank),
                        "--backbone", "S2SW-Tiny-24L", "--weights", "none", "--image-size", "224")
    assert_user_error(code, err, str(bank), "112 px", "matching image_size 112 (--image-size)")
    code, _, err = run_cli(capsys, "predict", str(refs), "--out", str(out), "--reference", str(bank), "--shots", "1", *TINY)
    assert_user_error(code, err, "--shots", "references file")


@pytest.mark.parametrize("argv, needles", [
    (["--few-shot-weight", "0.3"], ["--few-shot-weight", "--reference"]),
    (["--shots", "2"], ["--shots", "--reference"]),
    (["--coreset", "0.5"], ["--coreset", "--reference"]),
    (["--reference", "{refs}", "--few-shot-weight", "1.5"], ["--few-shot-weight", "[0, 1]"]),
    (["--reference", "{refs}", "--coreset", "0"], ["--coreset", "(0, 1]"]),
    (["--reference", "{refs}", "--shots", "5"], ["holds 3 images, fewer than shots 5 (--reference, --shots)"]),
    (["--reference", "{refs}", "--max-references", "2"],
     ["holds 3 images", "more than max_references 2 (--reference, --max-references); "
                        "pick fewer with shots K (--shots)"]),
    (["--reference", "{missing}"], ["input not found"]),
    (["--reference", "{empty}"], ["no images found"]),
    (["--reference", "{broken}"], ["reference image unusable", "bad.png"]),
])
def test_predict_few_shot_mistakes(capsys, tmp_path, refs, argv, needles):
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    names = {"refs": refs, "missing": tmp_path / "nope", "empty": tmp_path / "empty", "broken": tmp_path / "broken"}
    argv = [a.format(**names) for a in argv]
    code, _, err = run_cli(capsys, "predict", str(refs), "--out", str(tmp_path / "out"), *argv, *TINY)
    assert_user_error(code, err, *needles)


def test_a_reference_bank_beyond_the_available_memory_is_refused_before_reading(capsys, tmp_path, refs, monkeypatch):
    import s2swclip.inference.references as references
    from s2swclip.model.factory import load_detector

    det = load_detector("S2SW-Tiny-24L", None, None, image_size=112, untrained_ok=True)
    per = references.reference_bytes_per_image(det)
    tokens = (112 // 14) ** 2  # the tiny backbone: 14 px patches, width 768, four few-shot layers
    assert per == 4 * (3 * 112 * 112 + 2 * 4 * tokens * 768)
    monkeypatch.setattr(references, "available_memory", lambda: 2 * per)  # room for 2 of the 3 references
    decoded = []
    monkeypatch.setattr(references, "decode_for_model", lambda *a, **k: decoded.append(a))
    code, _, err = run_cli(capsys, "predict", str(refs), "--out", str(tmp_path / "out"), "--reference", str(refs),
                           *TINY)
    assert_user_error(code, err, "3 images need about", "GiB of memory is available",
                      "use fewer with shots K (--shots)")
    assert decoded == []  # refused before any image was read


# ------------------------------------------------------------------------------------- test
@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("ds") / "synth"
    generate_dataset(root, classes=["wood", "nut"], n_train_good=4, n_test_good=3, n_test_defect=3,
                     image_size=64, seed=0)
    return root


def _report(path):
    return json.loads((path / "report.json").read_text())


def test_test_with_shots_records_the_references(capsys, tmp_path, dataset):
    out = tmp_path / "rep"
    code, stdout, err = run_cli(capsys, "test", "--data", str(dataset), "--out", str(out), "--shots", "2",
                             "--shot-seed", "3", "--figures", "0", "--quiet", *TINY)
    assert code == 0, err
    r = _report(out)
    fs = r["few_shot"]
    assert (fs["shots"], fs["seeds"], fs["few_shot_weight"], fs["layers"]) == (2, [3], 0.5, [6, 12, 18, 24])
    meta = json.loads((dataset / "meta.json").read_text())
    for cls in ("wood", "nut"):
        entry = fs["references"]["3"][cls]
        train_good = [it["img_path"] for it in meta["train"][cls] if it["anomaly"] == 0]
        assert entry["split"] == "train" and len(entry["files"]) == 2 and set(entry["files"]) <= set(train_good)
        assert entry["evaluated"] == 6  # every test image
    assert "few-shot: 2 reference image(s) per class, seed(s) 3" in stdout
    # the same seed draws the same files; another seed (usually) others, reproducibly
    code, _, err = run_cli(capsys, "test", "--data", str(dataset), "--out", str(tmp_path / "again"), "--shots", "2",
                        "--shot-seed", "3", "--figures", "0", "--quiet", *TINY)
    assert code == 0
    again = _report(tmp_path / "again")
    assert again["few_shot"]["references"] == fs["references"]
    assert again["mean"] == r["mean"]


def test_test_with_several_seeds_gives_mean_and_std(capsys, tmp_path, dataset):
    out = tmp_path / "rep"
    code, stdout, err = run_cli(capsys, "test", "--data", str(dataset), "--out", str(out), "--shots", "1",
                             "--shot-seed", "0", "1", "2", "--figures", "0", "--quiet", *TINY)
    assert code == 0, err
    runs = [_report(out / f"seed_{s}") for s in (0, 1, 2)]
    r = _report(out)
    assert r["few_shot"]["seeds"] == [0, 1, 2]
    assert [r["few_shot"]["references"][str(s)] for s in (0, 1, 2)] == [
        x["few_shot"]["references"][str(s)] for s, x in zip((0, 1, 2), runs)]
    for key in ("pixel_auroc", "image_auroc"):
        per_seed = np.array([x["mean"][key] for x in runs])
        assert r["mean"][key] == pytest.approx(per_seed.mean(), abs=1e-12)
        assert r["std"]["mean"][key] == pytest.approx(per_seed.std(ddof=1), abs=1e-12)
        wood = np.array([x["classes"]["wood"][key] for x in runs])
        assert r["classes"]["wood"][key] == pytest.approx(wood.mean(), abs=1e-12)
        assert r["std"]["classes"]["wood"][key] == pytest.approx(wood.std(ddof=1), abs=1e-12)
    assert "mean over 3 seeds ± sample std" in stdout


def test_test_without_train_split_uses_and_excludes_test_normals(capsys, tmp_path, dataset):
    root = tmp_path / "notrain"
    root.mkdir()
    meta = json.loads((dataset / "meta.json").read_text())
    for cls in ("wood", "nut"):  # absolute paths: the images stay where they are
        for item in meta["test"][cls]:
            item["img_path"] = str(dataset / item["img_path"])
            if item["mask_path"]:
                item["mask_path"] = str(dataset / item["mask_path"])
    (root / "meta.json").write_text(json.dumps({"test": meta["test"]}))
    out = tmp_path / "rep"
    code, _, err = run_cli(capsys, "test", "--data", str(root), "--out", str(out), "--shots", "2", "--figures", "0",
                        "--quiet", *TINY)
    assert code == 0, err
    entry = _report(out)["few_shot"]["references"]["0"]["wood"]
    normals = {it["img_path"] for it in meta["test"]["wood"] if it["anomaly"] == 0}
    assert entry["split"] == "test" and set(entry["files"]) <= normals
    assert entry["evaluated"] == 6 - 2
    code, _, err = run_cli(capsys, "test", "--data", str(root), "--out", str(out), "--shots", "4", "--quiet", *TINY)
    assert_user_error(code, err, "class", "3 normal test image(s)", "fewer than shots 4 (--shots); lower shots")


def test_test_flag_mistakes(capsys, tmp_path, dataset):
    for argv, needle in ((["--shot-seed", "1"], "--shot-seed"), (["--few-shot-weight", "1"], "--few-shot-weight"),
                         (["--shots", "2", "--shot-seed", "1", "1"], "distinct seeds"),
                         (["--shots", "2", "--shot-seed", "-1"], "--shot-seed"),
                         (["--shots", "9"], "fewer than shots 9 (--shots)")):
        code, _, err = run_cli(capsys, "test", "--data", str(dataset), "--out", str(tmp_path / "r"), "--quiet",
                            *argv, *TINY)
        assert_user_error(code, err, needle)
