"""meta.json builders on small fake trees in each dataset's original layout."""

import json
import logging
import os

import numpy as np
import pytest
from PIL import Image

from s2swclip.data.builders import BUILDERS, build_meta, describe, summarize_meta, write_meta
from s2swclip.data.images import IMAGE_EXTENSIONS
from s2swclip.data.dataset import AnomalyDataset
from s2swclip.errors import S2SWError

ALL_NAMES = {
    "mvtec", "visa", "mpdd", "btad", "sdd", "dagm", "dtd", "headct", "brainmri", "br35h",
    "isic", "colondb", "clinicdb", "kvasir", "endo", "tn3k", "folder",
}


def img(path, value=128, size=(12, 10), mode="RGB"):
    """Write a tiny image (format from the extension) and return its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = size
    if mode == "RGB":
        arr = np.full((h, w, 3), value, np.uint8)
    else:
        arr = np.full((h, w), value, np.uint8)
    Image.fromarray(arr).save(path)
    return path


def mask(path, on=True, size=(12, 10)):
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.zeros(size, np.uint8)
    if on:
        arr[2:6, 3:7] = 255
    Image.fromarray(arr).save(path)
    return path


def load(root):
    with open(root / "meta.json") as fh:
        return json.load(fh)


def by_path(meta, split, cls):
    return {it["img_path"]: it for it in meta[split][cls]}


def check_readable(root, split="test"):
    """Every item of the written meta.json loads through AnomalyDataset."""
    ds = AnomalyDataset(root, split=split, image_size=16)
    for i in range(len(ds)):
        s = ds[i]
        if s["label"] == 1 and s["has_mask"]:
            assert s["mask"].sum() > 0
    return ds


def mvtec_tree(root, cls="bottle", defects=("broken", "crack"), normal="good", img_ext=".png",
               mask_ext=".png", mask_suffix="_mask"):
    for i in range(3):
        img(root / cls / "train" / normal / f"{i:03d}{img_ext}")
    for i in range(2):
        img(root / cls / "test" / normal / f"{i:03d}{img_ext}")
    for d in defects:
        for i in range(2):
            img(root / cls / "test" / d / f"{i:03d}{img_ext}", value=200)
            mask(root / cls / "ground_truth" / d / f"{i:03d}{mask_suffix}{mask_ext}")


# ------------------------------------------------------------------------------ registry, writing
def test_registry_and_aliases(tmp_path):
    assert set(BUILDERS) == ALL_NAMES
    assert list(describe()) == list(BUILDERS)
    assert describe()["sdd"] == "SDD (KolektorSDD, KolektorSDD2)" and describe()["folder"].endswith("MVTec-style folder")
    mvtec_tree(tmp_path)
    for name in ("MVTec", "mvtec-ad", "MVTEC_AD", "mvtec ad"):
        assert build_meta(name, tmp_path)["dataset"] == "mvtec"
    assert build_meta("custom", tmp_path)["dataset"] == "folder"
    assert build_meta("MVTec-style", tmp_path)["dataset"] == "folder"
    with pytest.raises(S2SWError, match="unknown dataset 'nope'") as e:
        build_meta("nope", tmp_path)
    assert str(e.value).endswith(", ".join(sorted(ALL_NAMES, key=list(BUILDERS).index)) + ".")


def test_image_files_are_those_pillow_decodes(tmp_path):
    """Any format of the one list (GIF, PPM, ...) counts as an image; other files, hidden files and
    resource forks are ignored, and masks are still paired by stem across formats."""
    assert {".gif", ".ppm", ".png", ".tiff"} <= set(IMAGE_EXTENSIONS)
    assert not {".txt", ".csv", ".json", ".db", ".md"} & set(IMAGE_EXTENSIONS)
    base = tmp_path / "widget"
    img(base / "train/good/000.gif")
    img(base / "train/good/001.ppm")
    img(base / "test/good/000.png")
    img(base / "test/dent/000.gif", value=200)
    img(base / "test/dent/001.tif", value=200)
    mask(base / "ground_truth/dent/000_mask.png")
    mask(base / "ground_truth/dent/001_mask.png")
    for junk in ("notes.txt", "Thumbs.db", "._000.png", ".hidden.png", "labels.csv"):
        for d in ("train/good", "test/dent", "ground_truth/dent"):
            (base / d / junk).write_bytes(b"not an image")
    img(base / "test/__MACOSX/000.png")  # a resource-fork folder is no defect type
    s = build_meta("folder", tmp_path)
    assert s["splits"] == {"train": {"widget": {"normal": 2, "anomaly": 0, "with_mask": 0}},
                           "test": {"widget": {"normal": 1, "anomaly": 2, "with_mask": 2}}}
    test = by_path(load(tmp_path), "test", "widget")
    assert sorted(test) == ["widget/test/dent/000.gif", "widget/test/dent/001.tif", "widget/test/good/000.png"]
    assert test["widget/test/dent/000.gif"]["mask_path"] == "widget/ground_truth/dent/000_mask.png"
    assert test["widget/test/dent/001.tif"]["mask_path"] == "widget/ground_truth/dent/001_mask.png"
    check_readable(tmp_path)
    check_readable(tmp_path, "train")


def test_atomic_write_leaves_no_temp(tmp_path):
    path = write_meta({"train": {}, "test": {}}, tmp_path)
    assert path == str(tmp_path / "meta.json")
    assert os.listdir(tmp_path) == ["meta.json"]
    write_meta({"train": {}, "test": {"x": []}}, tmp_path)
    assert load(tmp_path)["test"] == {"x": []} and os.listdir(tmp_path) == ["meta.json"]
    with pytest.raises(S2SWError, match="cannot write"):
        write_meta({}, tmp_path / "no" / "such" / "dir")


# ------------------------------------------------------------------------------ MVTec family
def test_mvtec(tmp_path):
    mvtec_tree(tmp_path, "bottle")
    mvtec_tree(tmp_path, "metal_nut", defects=("scratch",))
    s = build_meta("mvtec", tmp_path)
    assert s["meta_path"] == str(tmp_path / "meta.json")
    assert s["splits"]["train"]["bottle"] == {"normal": 3, "anomaly": 0, "with_mask": 0}
    assert s["splits"]["test"]["bottle"] == {"normal": 2, "anomaly": 4, "with_mask": 4}
    assert s["splits"]["test"]["metal_nut"] == {"normal": 2, "anomaly": 2, "with_mask": 2}
    assert s["total"] == 3 + 6 + 3 + 4 and s["anomalous_without_mask"] == 0
    meta = load(tmp_path)
    assert list(meta["test"]) == ["bottle", "metal_nut"]
    it = by_path(meta, "test", "bottle")["bottle/test/crack/001.png"]
    assert it == {"img_path": "bottle/test/crack/001.png", "mask_path": "bottle/ground_truth/crack/001_mask.png",
                  "cls_name": "bottle", "specie_name": "crack", "anomaly": 1}
    good = by_path(meta, "test", "bottle")["bottle/test/good/000.png"]
    assert good["mask_path"] == "" and good["anomaly"] == 0 and good["specie_name"] == "good"
    ds = check_readable(tmp_path)
    assert ds.classes == ["bottle", "metal_nut"]
    check_readable(tmp_path, "train")


def test_mvtec_defect_without_ground_truth_warns(tmp_path, caplog):
    mvtec_tree(tmp_path, "bottle")
    img(tmp_path / "bottle/test/unlabelled/000.png")
    img(tmp_path / "bottle/test/unlabelled/001.png")
    with caplog.at_level(logging.WARNING, logger="s2swclip"):
        s = build_meta("mvtec", tmp_path)
    assert [r.getMessage() for r in caplog.records] == [
        'MVTec AD: no mask found for anomalous image bottle/test/unlabelled/000.png (and 1 more); '
        'such images get mask_path "" and count for image-level metrics only.'
    ]
    assert s["anomalous_without_mask"] == 2
    it = by_path(load(tmp_path), "test", "bottle")["bottle/test/unlabelled/000.png"]
    assert it["anomaly"] == 1 and it["mask_path"] == ""


def test_mpdd_and_dtd(tmp_path):
    mvtec_tree(tmp_path / "MPDD", "bracket_black", defects=("hole",))
    s = build_meta("mpdd", tmp_path / "MPDD")
    assert s["splits"]["test"]["bracket_black"] == {"normal": 2, "anomaly": 2, "with_mask": 2}
    mvtec_tree(tmp_path / "DTD", "Woven_001", defects=("bad",), mask_suffix="")  # same-stem masks
    s = build_meta("dtd", tmp_path / "DTD")
    assert s["splits"]["test"]["Woven_001"]["with_mask"] == 2
    it = by_path(load(tmp_path / "DTD"), "test", "Woven_001")["Woven_001/test/bad/000.png"]
    assert it["mask_path"] == "Woven_001/ground_truth/bad/000.png"
    check_readable(tmp_path / "DTD")


def test_btad_from_parent_folder(tmp_path):
    base = tmp_path / "BTech_Dataset_transformed"
    mvtec_tree(base, "01", defects=("ko",), normal="ok", img_ext=".bmp", mask_ext=".png", mask_suffix="")
    mvtec_tree(base, "03", defects=("ko",), normal="ok", img_ext=".bmp", mask_ext=".bmp", mask_suffix="")
    s = build_meta("btad", tmp_path)
    assert s["splits"]["test"]["01"] == {"normal": 2, "anomaly": 2, "with_mask": 2}
    assert s["splits"]["train"]["03"] == {"normal": 3, "anomaly": 0, "with_mask": 0}
    it = by_path(load(tmp_path), "test", "03")["BTech_Dataset_transformed/03/test/ko/001.bmp"]
    assert it["mask_path"] == "BTech_Dataset_transformed/03/ground_truth/ko/001.bmp"
    check_readable(tmp_path)


def test_generic_folder(tmp_path):
    mvtec_tree(tmp_path / "mine", "widget", defects=("dent",))
    mvtec_tree(tmp_path / "mine", "gadget", defects=("chip",), mask_suffix="", img_ext=".jpg")
    s = build_meta("folder", tmp_path / "mine")
    assert s["splits"]["test"]["gadget"] == {"normal": 2, "anomaly": 2, "with_mask": 2}
    assert s["splits"]["test"]["widget"] == {"normal": 2, "anomaly": 2, "with_mask": 2}
    check_readable(tmp_path / "mine")


# ------------------------------------------------------------------------------ VisA
def visa_tree(root, with_csv=True):
    rows = ["object,split,label,image,mask"]
    for cls in ("candle", "pcb1"):
        for i in range(2):
            p = f"{cls}/Data/Images/Normal/{i:04d}.JPG"
            img(root / p)
            rows.append(f"{cls},train,normal,{p},")
        p = f"{cls}/Data/Images/Normal/0100.JPG"
        img(root / p)
        rows.append(f"{cls},test,normal,{p},")
        for i in range(2):
            p = f"{cls}/Data/Images/Anomaly/{i:03d}.JPG"
            m = f"{cls}/Data/Masks/Anomaly/{i:03d}.png"
            img(root / p)
            mm = np.zeros((12, 10), np.uint8)
            mm[1:3, 1:3] = 2  # VisA masks hold small class-index values
            (root / m).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(mm).save(root / m)
            rows.append(f"{cls},test,anomaly,{p},{m}")
    if with_csv:
        (root / "split_csv").mkdir(parents=True, exist_ok=True)
        (root / "split_csv/1cls.csv").write_text("\n".join(rows) + "\n")


def test_visa(tmp_path):
    visa_tree(tmp_path)
    s = build_meta("visa", tmp_path)
    assert s["splits"]["train"]["candle"] == {"normal": 2, "anomaly": 0, "with_mask": 0}
    assert s["splits"]["test"]["pcb1"] == {"normal": 1, "anomaly": 2, "with_mask": 2}
    it = by_path(load(tmp_path), "test", "candle")["candle/Data/Images/Anomaly/001.JPG"]
    assert it["mask_path"] == "candle/Data/Masks/Anomaly/001.png" and it["specie_name"] == ""
    ds = check_readable(tmp_path)
    assert ds[ds.indices_of("candle")[1]]["mask"].sum() > 0


def test_visa_errors(tmp_path):
    visa_tree(tmp_path, with_csv=False)
    with pytest.raises(S2SWError, match=r"1cls\.csv"):
        build_meta("visa", tmp_path)
    visa_tree(tmp_path)
    os.remove(tmp_path / "pcb1/Data/Images/Normal/0100.JPG")
    with pytest.raises(S2SWError, match=r"pcb1/Data/Images/Normal/0100\.JPG"):
        build_meta("visa", tmp_path)
    (tmp_path / "split_csv/1cls.csv").write_text("a,b\n1,2\n")
    with pytest.raises(S2SWError, match="columns"):
        build_meta("visa", tmp_path)


# ------------------------------------------------------------------------------ SDD
def test_sdd_original_kolektor(tmp_path):
    for k, defect_part in ((1, 2), (2, None)):
        for p in range(3):
            img(tmp_path / f"kos{k:02d}/Part{p}.jpg", mode="L")
            mask(tmp_path / f"kos{k:02d}/Part{p}_label.bmp", on=(p == defect_part))
    s = build_meta("sdd", tmp_path)
    assert s["splits"]["test"]["electrical_commutators"] == {"normal": 5, "anomaly": 1, "with_mask": 1}
    it = by_path(load(tmp_path), "test", "electrical_commutators")["kos01/Part2.jpg"]
    assert it["anomaly"] == 1 and it["mask_path"] == "kos01/Part2_label.bmp"
    assert by_path(load(tmp_path), "test", "electrical_commutators")["kos01/Part1.jpg"]["mask_path"] == ""
    check_readable(tmp_path)


def test_sdd_kolektor2_and_mvtec_style(tmp_path):
    k2 = tmp_path / "ksdd2"
    for split in ("train", "test"):
        for i, on in ((10000, False), (10001, True)):
            img(k2 / split / f"{i}.png")
            mask(k2 / split / f"{i}_GT.png", on=on)
    s = build_meta("sdd", k2)
    assert s["splits"]["train"]["electrical_commutators"] == {"normal": 1, "anomaly": 1, "with_mask": 1}
    mv = tmp_path / "SDD"
    mvtec_tree(mv, "electrical commutators", defects=("defect",))
    s = build_meta("sdd", mv)
    assert s["splits"]["test"]["electrical commutators"] == {"normal": 2, "anomaly": 2, "with_mask": 2}


# ------------------------------------------------------------------------------ DAGM
def test_dagm(tmp_path):
    base = tmp_path / "DAGM_KaggleUpload"
    for c in ("Class1", "Class2", "Class10"):
        for split in ("Train", "Test"):
            for i in range(1, 5):
                img(base / c / split / f"{i:04d}.PNG", mode="L")
            mask(base / c / split / "Label" / "0002_label.PNG")
            mask(base / c / split / "Label" / "0004_label.PNG")
            (base / c / split / "Label" / "Labels.txt").write_text("1\n")
    s = build_meta("dagm", tmp_path)
    assert list(s["splits"]["test"]) == ["Class1", "Class2", "Class10"]
    assert s["splits"]["train"]["Class10"] == {"normal": 2, "anomaly": 2, "with_mask": 2}
    it = by_path(load(tmp_path), "test", "Class2")["DAGM_KaggleUpload/Class2/Test/0004.PNG"]
    assert it["mask_path"] == "DAGM_KaggleUpload/Class2/Test/Label/0004_label.PNG" and it["anomaly"] == 1
    assert by_path(load(tmp_path), "test", "Class2")["DAGM_KaggleUpload/Class2/Test/0001.PNG"]["anomaly"] == 0
    check_readable(tmp_path)


# ------------------------------------------------------------------------------ image-level medical
def test_headct_kaggle_labels(tmp_path):
    d = tmp_path / "head_ct" / "head_ct"
    for i in range(4):
        img(d / f"{i:03d}.png", mode="L")
    (tmp_path / "labels.csv").write_text("id, hemorrhage\n0,1\n1,1\n2,0\n3,0\n")
    s = build_meta("headct", tmp_path)
    assert s["splits"]["test"]["brain"] == {"normal": 2, "anomaly": 2, "with_mask": 0}
    assert s["splits"].get("train", {}) == {}
    it = by_path(load(tmp_path), "test", "brain")["head_ct/head_ct/001.png"]
    assert it["anomaly"] == 1 and it["mask_path"] == ""
    ds = check_readable(tmp_path)
    for i in range(len(ds)):  # image-level only: anomalies carry no mask
        assert ds[i]["has_mask"] is (ds[i]["label"] == 0)


def test_headct_folders(tmp_path):
    for i in range(2):
        img(tmp_path / "no" / f"{i}.png")
        img(tmp_path / "yes" / f"{i}.png")
    assert build_meta("headct", tmp_path)["splits"]["test"]["brain"] == {"normal": 2, "anomaly": 2, "with_mask": 0}


def test_brainmri_prefers_brain_tumor_dataset(tmp_path):
    for top in (tmp_path / "brain_tumor_dataset", tmp_path):  # the archive holds two copies
        for i in range(2):
            img(top / "no" / f"N{i}.jpg")
        for i in range(3):
            img(top / "yes" / f"Y{i}.jpg")
    s = build_meta("brainmri", tmp_path)
    assert s["splits"]["test"]["brain"] == {"normal": 2, "anomaly": 3, "with_mask": 0}
    assert all(p.startswith("brain_tumor_dataset/") for p in by_path(load(tmp_path), "test", "brain"))
    check_readable(tmp_path)


def test_br35h_ignores_pred(tmp_path):
    for i in range(2):
        img(tmp_path / "no" / f"no{i}.jpg")
        img(tmp_path / "yes" / f"y{i}.jpg")
        img(tmp_path / "pred" / f"pred{i}.jpg")
    s = build_meta("br35h", tmp_path)
    assert s["splits"]["test"]["brain"] == {"normal": 2, "anomaly": 2, "with_mask": 0}
    assert not any("pred" in p for p in by_path(load(tmp_path), "test", "brain"))


# ------------------------------------------------------------------------------ pixel-level medical
def test_isic(tmp_path):
    for i in (3, 12):
        img(tmp_path / "ISBI2016_ISIC_Part1_Test_Data" / f"ISIC_{i:07d}.jpg")
        mask(tmp_path / "ISBI2016_ISIC_Part1_Test_GroundTruth" / f"ISIC_{i:07d}_Segmentation.png")
    s = build_meta("isic", tmp_path)
    assert s["splits"]["test"]["skin"] == {"normal": 0, "anomaly": 2, "with_mask": 2}
    it = by_path(load(tmp_path), "test", "skin")["ISBI2016_ISIC_Part1_Test_Data/ISIC_0000012.jpg"]
    assert it["mask_path"] == "ISBI2016_ISIC_Part1_Test_GroundTruth/ISIC_0000012_Segmentation.png"
    check_readable(tmp_path)


def test_isic_anomalyclip_layout(tmp_path):
    img(tmp_path / "skin/test/defect/ISIC_0000001.jpg")
    mask(tmp_path / "skin/ISBI2016_ISIC_Part1_Test_GroundTruth/ISIC_0000001_Segmentation.png")
    s = build_meta("isic", tmp_path)
    assert s["splits"]["test"]["skin"] == {"normal": 0, "anomaly": 1, "with_mask": 1}


def test_colondb_variants(tmp_path):
    a = tmp_path / "a" / "CVC-ColonDB"
    for i in (1, 2, 10):
        img(a / "images" / f"{i}.png")
        mask(a / "masks" / f"{i}.png")
    s = build_meta("colondb", tmp_path / "a")
    assert s["splits"]["test"]["colon"] == {"normal": 0, "anomaly": 3, "with_mask": 3}
    assert by_path(load(tmp_path / "a"), "test", "colon")["CVC-ColonDB/images/10.png"]["mask_path"] == "CVC-ColonDB/masks/10.png"
    b = tmp_path / "b"
    for i in (1, 2):
        img(b / f"{i}.tiff")
        mask(b / f"p{i}.tiff")
    s = build_meta("colondb", b)
    assert s["splits"]["test"]["colon"] == {"normal": 0, "anomaly": 2, "with_mask": 2}
    assert by_path(load(b), "test", "colon")["2.tiff"]["mask_path"] == "p2.tiff"
    check_readable(b)


def test_clinicdb_original_tif(tmp_path):
    for i in (1, 2):
        img(tmp_path / "PNG" / "Original" / f"{i}.png")
        mask(tmp_path / "PNG" / "Ground Truth" / f"{i}.png")
        img(tmp_path / "TIF" / "Original" / f"{i}.tif")
        mask(tmp_path / "TIF" / "Ground Truth" / f"{i}.tif")
    s = build_meta("clinicdb", tmp_path)
    assert s["splits"]["test"]["colon"] == {"normal": 0, "anomaly": 2, "with_mask": 2}
    assert all(p.startswith("PNG/Original/") for p in by_path(load(tmp_path), "test", "colon"))
    check_readable(tmp_path)


def test_kvasir_jpg_masks(tmp_path):
    for n in ("cju0qkwl35piu0993l0dewei2", "cju0s690hkp960855tjuaqvv0"):
        img(tmp_path / "Kvasir-SEG/images" / f"{n}.jpg")
        mask(tmp_path / "Kvasir-SEG/masks" / f"{n}.jpg")
    s = build_meta("kvasir", tmp_path)
    assert s["splits"]["test"]["colon"] == {"normal": 0, "anomaly": 2, "with_mask": 2}
    check_readable(tmp_path)


def test_endo(tmp_path):
    for i in range(2):
        img(tmp_path / "images" / f"{i}.jpg")
        mask(tmp_path / "masks" / f"{i}.png")
    img(tmp_path / "good" / "n0.jpg")
    s = build_meta("endo", tmp_path)
    assert s["splits"]["test"]["colon"] == {"normal": 1, "anomaly": 2, "with_mask": 2}
    check_readable(tmp_path)


def test_tn3k_test_split_only(tmp_path):
    for i in range(3):
        img(tmp_path / "tn3k/test-image" / f"{i:04d}.jpg", mode="L")
        mask(tmp_path / "tn3k/test-mask" / f"{i:04d}.jpg")
        img(tmp_path / "tn3k/trainval-image" / f"{i:04d}.jpg")
        mask(tmp_path / "tn3k/trainval-mask" / f"{i:04d}.jpg")
    s = build_meta("tn3k", tmp_path)
    assert s["splits"]["test"]["thyroid"] == {"normal": 0, "anomaly": 3, "with_mask": 3}
    assert all("test-image" in p for p in by_path(load(tmp_path), "test", "thyroid"))
    check_readable(tmp_path)


def test_sorted_pairing_fallback(tmp_path):
    """Names that share no stem are paired in sorted order when the counts agree (authors' rule)."""
    for i in range(2):
        img(tmp_path / "images" / f"img_{i}.png")
        mask(tmp_path / "masks" / f"seg{i}.png")
    build_meta("kvasir", tmp_path)
    assert by_path(load(tmp_path), "test", "colon")["images/img_1.png"]["mask_path"] == "masks/seg1.png"


# ------------------------------------------------------------------------------ wrong layouts
@pytest.mark.parametrize("name", sorted(ALL_NAMES))
def test_wrong_layout_says_what_was_expected(tmp_path, name):
    img(tmp_path / "random" / "x.png")
    with pytest.raises(S2SWError) as e:
        build_meta(name, tmp_path)
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path) in msg
    assert not (tmp_path / "meta.json").exists()


def test_missing_root(tmp_path):
    with pytest.raises(S2SWError, match="not found"):
        build_meta("mvtec", tmp_path / "absent")


def test_summarize_meta():
    meta = {"test": {"c": [{"anomaly": 1, "mask_path": "m"}, {"anomaly": 1, "mask_path": ""}, {"anomaly": 0}]}}
    s = summarize_meta(meta)
    assert s["splits"]["test"]["c"] == {"normal": 1, "anomaly": 2, "with_mask": 1}
    assert s["total"] == 3 and s["anomalous_without_mask"] == 1
