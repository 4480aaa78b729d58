"""meta.json reader and preprocessing: shapes, exact normalisation, masks, odd image modes, errors."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from s2swclip.data.dataset import (
    OPENAI_MEAN,
    OPENAI_STD,
    AnomalyDataset,
    load_image,
    load_mask,
    preprocess_image,
    preprocess_mask,
    read_meta,
)
from s2swclip.errors import S2SWError

S = 32


def _rgb(h=30, w=40, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _save(arr_or_img, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    img = arr_or_img if isinstance(arr_or_img, Image.Image) else Image.fromarray(arr_or_img)
    img.save(path)
    return path


def _item(img, mask, cls, anomaly, specie=""):
    return {"img_path": img, "mask_path": mask, "cls_name": cls, "specie_name": specie, "anomaly": anomaly}


@pytest.fixture
def tree(tmp_path):
    """Two classes; normal, anomalous with a (differently sized) mask, without mask, mask=dir."""
    _save(_rgb(seed=1), tmp_path / "a/good/0.png")
    _save(_rgb(seed=2), tmp_path / "a/bad/1.png")
    m = np.zeros((20, 20), np.uint8)
    m[:, :10] = 1  # 0/1 mask, smaller than the image
    _save(m, tmp_path / "a/gt/1_mask.png")
    _save(_rgb(seed=3), tmp_path / "a/bad/2.png")
    _save(_rgb(seed=4), tmp_path / "a/bad/3.png")
    _save(_rgb(seed=5, h=24, w=24), tmp_path / "b/good/0.jpg")
    meta = {
        "train": {"b": [_item("b/good/0.jpg", "", "b", 0, "good")]},
        "test": {
            "a": [
                _item("a/good/0.png", "", "a", 0, "good"),
                _item("a/bad/1.png", "a/gt/1_mask.png", "a", 1, "bad"),
                _item("a/bad/2.png", "", "a", 1, "bad"),
                _item("a/bad/3.png", "a/gt", "a", 1, "bad"),
            ],
            "b": [_item("b/good/0.jpg", "", "b", 0, "good")],
        },
    }
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    return tmp_path


def _expected_image(pil_rgb, size):
    arr = np.asarray(pil_rgb.resize((size, size), Image.BICUBIC), dtype=np.float64) / 255.0
    arr = (arr - np.array(OPENAI_MEAN)) / np.array(OPENAI_STD)
    return torch.from_numpy(arr.transpose(2, 0, 1).astype(np.float32))


def test_items_shapes_and_fields(tree):
    ds = AnomalyDataset(tree, split="test", image_size=S)
    assert ds.classes == ["a", "b"]
    assert len(ds) == 5 and len(ds.items) == 5
    assert ds.class_indices() == {"a": [0, 1, 2, 3], "b": [4]}
    assert ds.indices_of("b") == [4]
    assert ds.labels == [0, 1, 1, 1, 0]
    for i in range(len(ds)):
        s = ds[i]
        assert set(s) == {"image", "mask", "label", "has_mask", "cls_name", "path"}
        assert s["image"].shape == (3, S, S) and s["image"].dtype == torch.float32
        assert s["mask"].shape == (S, S) and s["mask"].dtype == torch.float32
        assert set(torch.unique(s["mask"]).tolist()) <= {0.0, 1.0}
        assert isinstance(s["label"], int) and isinstance(s["has_mask"], bool)
        assert os.path.isabs(s["path"]) and os.path.isfile(s["path"])
        assert s["path"] == str(tree / ds.items[i]["img_path"])
    assert ds[4]["cls_name"] == "b"


def test_normalisation_matches_direct_pil_numpy(tree):
    ds = AnomalyDataset(tree, split="test", image_size=S)
    got = ds[0]["image"]
    want = _expected_image(Image.open(tree / "a/good/0.png").convert("RGB"), S)
    assert torch.allclose(got, want, atol=1e-5)
    # preprocess_image is the same transform
    assert torch.allclose(preprocess_image(Image.open(tree / "a/good/0.png"), S), want, atol=1e-5)


def test_mask_binarisation_and_resize_of_other_size(tree):
    ds = AnomalyDataset(tree, split="test", image_size=S)
    s = ds[1]
    assert s["label"] == 1 and s["has_mask"] is True
    # direct computation: >0 -> 0/255 -> bilinear resize -> >0.5
    raw = np.asarray(Image.open(tree / "a/gt/1_mask.png").convert("L")) > 0
    ref = np.asarray(Image.fromarray(raw.astype(np.uint8) * 255).resize((S, S), Image.BILINEAR)) / 255.0 > 0.5
    assert np.array_equal(s["mask"].numpy().astype(bool), ref)
    assert s["mask"][:, : S // 2 - 1].min() == 1 and s["mask"][:, S // 2 + 1 :].max() == 0


def test_mask_values_threshold_at_zero(tmp_path):
    m = np.array([[0, 1, 2, 255]] * 4, np.uint8)  # VisA-style class-index values count as defect
    _save(m, tmp_path / "m.png")
    assert np.array_equal(load_mask(tmp_path / "m.png"), m > 0)
    t = preprocess_mask(m > 0, 8)
    assert t.shape == (8, 8) and t.dtype == torch.float32
    assert t[:, :1].max() == 0 and t[:, -2:].min() == 1


def test_normal_and_maskless_anomalies(tree):
    ds = AnomalyDataset(tree, split="test", image_size=S)
    n = ds[0]
    assert n["label"] == 0 and n["has_mask"] is True and n["mask"].sum() == 0
    for i in (2, 3):  # mask_path "" and mask_path pointing to a directory
        s = ds[i]
        assert s["label"] == 1 and s["has_mask"] is False and s["mask"].sum() == 0
    assert [ds[i]["has_mask"] for i in range(5)] == [True, True, False, False, True]


def test_class_filter_order_and_train_split(tree):
    ds = AnomalyDataset(tree, split="test", image_size=S, classes=["b", "a"])
    assert ds.classes == ["b", "a"] and ds.class_indices() == {"b": [0], "a": [1, 2, 3, 4]}
    tr = AnomalyDataset(tree, split="train", image_size=S)
    assert tr.classes == ["b"] and len(tr) == 1
    with pytest.raises(S2SWError, match="zzz"):
        AnomalyDataset(tree, classes=["zzz"], image_size=S)
    with pytest.raises(S2SWError, match="valid"):
        AnomalyDataset(tree, split="valid", image_size=S)


def test_dataloader_collates(tree):
    ds = AnomalyDataset(tree, split="test", image_size=S)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=3)))
    assert batch["image"].shape == (3, 3, S, S) and batch["mask"].shape == (3, S, S)
    assert batch["label"].tolist() == [0, 1, 1] and batch["has_mask"].tolist() == [True, True, False]
    assert len(batch["path"]) == 3 and batch["cls_name"] == ["a", "a", "a"]


# ------------------------------------------------------------------------------ image modes
def test_grey_rgba_palette_become_rgb(tmp_path):
    rgb = _rgb()
    grey = rgb[..., 0]
    _save(grey, tmp_path / "g.png")
    g = load_image(tmp_path / "g.png")
    assert g.mode == "RGB" and np.array_equal(np.asarray(g), np.repeat(grey[..., None], 3, axis=2))

    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    _save(rgba, tmp_path / "a.png")
    assert np.array_equal(np.asarray(load_image(tmp_path / "a.png")), rgb)
    rgba[..., 3] = 0  # fully transparent: composited on black
    _save(rgba, tmp_path / "t.png")
    assert np.asarray(load_image(tmp_path / "t.png")).max() == 0

    pal = Image.fromarray(rgb).quantize(colors=16)
    _save(pal, tmp_path / "p.png")
    p = load_image(tmp_path / "p.png")
    assert p.mode == "RGB" and np.array_equal(np.asarray(p), np.asarray(pal.convert("RGB")))
    assert preprocess_image(Image.open(tmp_path / "p.png"), S).shape == (3, S, S)


@pytest.mark.parametrize(
    "values, expect",
    [
        ([0, 1024, 2048, 4095], [0, 64, 128, 255]),  # 12-bit data in a 16-bit file
        ([0, 257, 32896, 65535], [0, 1, 128, 255]),  # full 16-bit range
        ([0, 10, 100, 255], [0, 10, 100, 255]),  # 8-bit data in a 16-bit file
    ],
)
def test_sixteen_bit_is_scaled_not_clipped(tmp_path, values, expect):
    arr = np.array([values] * 4, np.uint16)
    img = Image.fromarray(arr)
    assert img.mode == "I;16"
    _save(img, tmp_path / "x16.png")
    out = np.asarray(load_image(tmp_path / "x16.png"))
    assert out.dtype == np.uint8 and out.shape == (4, 4, 3)
    assert np.allclose(out[0, :, 0], expect, atol=1)
    assert (out[..., 0] == out[..., 1]).all()


def test_signed_32bit_and_float_images(tmp_path):
    arr = np.array([[-1000, 0, 1000]] * 3, np.int32)
    out = np.asarray(load_image(_save(Image.fromarray(arr), tmp_path / "i32.tif")))
    assert out[0, :, 0].tolist() == [0, 128, 255]
    f = np.array([[0.0, 0.5, 1.0]] * 3, np.float32)
    out = np.asarray(load_image(_save(Image.fromarray(f), tmp_path / "f.tif")))
    assert out[0, :, 0].tolist() == [0, 128, 255]


# ------------------------------------------------------------------------------ errors
def test_missing_image_names_item(tree):
    os.remove(tree / "a/bad/2.png")
    ds = AnomalyDataset(tree, split="test", image_size=S)
    with pytest.raises(S2SWError) as e:
        ds[2]
    msg = str(e.value)
    assert "\n" not in msg and "test/a" in msg and "a/bad/2.png" in msg and "not found" in msg


def test_missing_mask_names_item_and_file(tree):
    os.remove(tree / "a/gt/1_mask.png")
    ds = AnomalyDataset(tree, split="test", image_size=S)
    with pytest.raises(S2SWError) as e:
        ds[1]
    msg = str(e.value)
    assert "a/bad/1.png" in msg and "1_mask.png" in msg and "mask" in msg


def test_unreadable_image(tree):
    (tree / "a/good/0.png").write_bytes(b"this is not a png")
    ds = AnomalyDataset(tree, split="test", image_size=S)
    with pytest.raises(S2SWError, match=r"a/good/0\.png") as e:
        ds[0]
    assert "\n" not in str(e.value)
    with pytest.raises(S2SWError, match="is not an image Pillow can read") as e:
        load_image(tree / "a/good/0.png")
    assert e.value.code == "not_an_image"
    with pytest.raises(S2SWError, match="not found"):
        load_image(tree / "nope.png")
    with pytest.raises(S2SWError, match="PIL image"):
        preprocess_image(np.zeros((4, 4, 3)), S)


def test_meta_json_errors(tmp_path):
    with pytest.raises(S2SWError, match="meta.json not found"):
        AnomalyDataset(tmp_path)
    (tmp_path / "meta.json").write_text("{not json")
    with pytest.raises(S2SWError, match="not valid JSON"):
        AnomalyDataset(tmp_path)
    (tmp_path / "meta.json").write_text("[1, 2]")
    with pytest.raises(S2SWError, match="must be an object"):
        read_meta(tmp_path / "meta.json")
    (tmp_path / "meta.json").write_text(json.dumps({"test": {"a": [{"img_path": "x.png", "anomaly": 3}]}}))
    with pytest.raises(S2SWError, match=r"test/a\[0\]"):
        AnomalyDataset(tmp_path)
    (tmp_path / "meta.json").write_text(json.dumps({"test": {"a": [{"mask_path": ""}]}}))
    with pytest.raises(S2SWError, match="img_path"):
        AnomalyDataset(tmp_path)
    with pytest.raises(S2SWError, match="not a directory"):
        AnomalyDataset(tmp_path / "missing")
    with pytest.raises(S2SWError, match="image_size"):
        AnomalyDataset(tmp_path, image_size=0)


def test_authors_style_meta_files(tmp_path):
    """Capitalised split keys (AnomalyCLIP DAGM) and paths prefixed with the build folder."""
    root = tmp_path / "brainMRI"
    _save(_rgb(), root / "yes/Y1.jpg")
    meta = {"Test": {"brain": [{"img_path": "../old/place/brainMRI/yes/Y1.jpg", "mask_path": "",
                                "cls_name": "brain", "specie_name": "yes", "anomaly": 1}]}, "Train": {}}
    (root / "meta.json").write_text(json.dumps(meta))
    ds = AnomalyDataset(root, split="test", image_size=S)
    s = ds[0]
    assert s["path"] == str(root / "yes/Y1.jpg") and s["label"] == 1 and s["has_mask"] is False


def test_absolute_paths_and_custom_meta_path(tmp_path):
    img = _save(_rgb(), tmp_path / "imgs/x.png")
    meta = {"test": {"c": [{"img_path": str(img), "mask_path": "", "anomaly": 0}]}}
    mp = tmp_path / "elsewhere.json"
    mp.write_text(json.dumps(meta))
    ds = AnomalyDataset(tmp_path / "imgs", image_size=S, meta_path=mp)
    assert ds.classes == ["c"] and ds[0]["path"] == str(img) and ds.items[0]["cls_name"] == "c"
