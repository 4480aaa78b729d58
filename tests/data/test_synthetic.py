"""Synthetic defect generator: determinism, exact masks, visible defects, MVTec layout + meta.json."""

import hashlib
import json
import os

import numpy as np
import pytest
from PIL import Image

from s2swclip.data.dataset import AnomalyDataset
from s2swclip.data.synthetic import (
    DEFECT_TYPES,
    OBJECT_FAMILIES,
    SYNTHETIC_CLASSES,
    TEXTURE_FAMILIES,
    class_defects,
    generate_dataset,
    render_sample,
)
from s2swclip.errors import S2SWError

SIZE = 64


def _hashes(root):
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = hashlib.sha256(fh.read()).hexdigest()
    return out


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    base = tmp_path_factory.mktemp("syn")
    return generate_dataset(base / "a", classes=["wood", "pill", "nut"], n_train_good=2, n_test_good=2,
                            n_test_defect=7, image_size=SIZE, seed=3)


def test_layout_and_meta(small):
    meta = json.load(open(os.path.join(small, "meta.json")))
    assert sorted(meta["test"]) == ["nut", "pill", "wood"]
    for cls in ("wood", "pill", "nut"):
        assert len(meta["train"][cls]) == 2 and all(it["anomaly"] == 0 for it in meta["train"][cls])
        test = meta["test"][cls]
        assert sum(it["anomaly"] == 0 for it in test) == 2 and sum(it["anomaly"] == 1 for it in test) == 7
        for it in test:
            if it["anomaly"]:
                assert it["mask_path"] == it["img_path"].replace("/test/", "/ground_truth/").replace(".png", "_mask.png")
                assert it["specie_name"] in class_defects(cls)
            else:
                assert it["mask_path"] == "" and it["specie_name"] == "good"
    # round robin: 7 defects over the 6 texture types -> first type twice
    woods = [it["specie_name"] for it in meta["test"]["wood"] if it["anomaly"]]
    assert "missing_part" not in woods and len(set(woods)) == 6
    pills = {it["specie_name"] for it in meta["test"]["pill"] if it["anomaly"]}
    assert pills == set(DEFECT_TYPES)
    assert os.path.isfile(os.path.join(small, "wood", "train", "good", "001.png"))
    im = Image.open(os.path.join(small, "nut", "test", "good", "000.png"))
    assert im.mode == "RGB" and im.size == (SIZE, SIZE)


def test_masks_nonempty_exactly_for_defects(small):
    ds = AnomalyDataset(small, split="test", image_size=SIZE)
    for i in range(len(ds)):
        s = ds[i]
        assert s["has_mask"] is True
        assert (s["mask"].sum() > 0) == (s["label"] == 1), ds.items[i]["img_path"]
    for root, _, files in os.walk(small):
        for f in files:
            if f.endswith("_mask.png"):
                m = np.asarray(Image.open(os.path.join(root, f)))
                assert set(np.unique(m).tolist()) == {0, 255}


def test_deterministic_bytes(small, tmp_path):
    again = generate_dataset(tmp_path / "b", classes=["wood", "pill", "nut"], n_train_good=2, n_test_good=2,
                             n_test_defect=7, image_size=SIZE, seed=3)
    h1, h2 = _hashes(small), _hashes(again)
    assert h1 == h2 and len(h1) > 30
    other = generate_dataset(tmp_path / "c", classes=["wood", "pill", "nut"], n_train_good=2, n_test_good=2,
                             n_test_defect=7, image_size=SIZE, seed=4)
    h3 = _hashes(other)
    assert h3.keys() == h1.keys()
    differ = [k for k in h1 if k.endswith(".png") and h1[k] != h3[k]]
    assert len(differ) == sum(k.endswith(".png") for k in h1)


def test_rerun_into_same_folder_and_foreign_folder(tmp_path):
    out = generate_dataset(tmp_path / "d", classes=["marble"], n_train_good=3, n_test_good=1, n_test_defect=1,
                           image_size=SIZE)
    generate_dataset(out, classes=["dots"], n_train_good=1, n_test_good=1, n_test_defect=1, image_size=SIZE)
    assert sorted(json.load(open(os.path.join(out, "meta.json")))["test"]) == ["dots"]
    assert not os.path.exists(os.path.join(out, "marble"))
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "keep.txt").write_text("user data")
    with pytest.raises(S2SWError, match="not empty"):
        generate_dataset(tmp_path / "foreign", classes=["dots"], image_size=SIZE)
    assert (tmp_path / "foreign" / "keep.txt").exists()


def test_bad_arguments(tmp_path):
    with pytest.raises(S2SWError, match="unknown synthetic class"):
        generate_dataset(tmp_path / "e", classes=["unicorn"])
    with pytest.raises(S2SWError, match="n_test_good"):
        generate_dataset(tmp_path / "e", classes=["wood"], n_test_good=-1)
    with pytest.raises(S2SWError, match="unknown defect"):
        generate_dataset(tmp_path / "e", classes=["wood"], defects=["dent"])
    with pytest.raises(S2SWError, match="no allowed defect"):
        generate_dataset(tmp_path / "e", classes=["wood"], defects=["missing_part"], image_size=SIZE)
    with pytest.raises(S2SWError, match="unknown defect"):
        render_sample("wood", "dent")


CASES = [(c, d) for c in list(SYNTHETIC_CLASSES) + ["stripes", "ring"] for d in class_defects(c)]


@pytest.mark.parametrize("cls, defect", CASES)
def test_mask_is_exact_and_defect_visible(cls, defect):
    for seed in (0, 1):
        clean, m0 = render_sample(cls, None, seed=seed, image_size=SIZE)
        bad, m = render_sample(cls, defect, seed=seed, image_size=SIZE)
        assert not m0.any() and m.any() and m.dtype == bool and m.shape == (SIZE, SIZE)
        changed = np.any(bad != clean, axis=2)
        assert not (changed & ~m).any(), "pixels outside the mask changed"
        assert changed[m].mean() >= 0.9, "mask covers unchanged pixels"
        diff = np.abs(bad.astype(int) - clean.astype(int)).sum(axis=2)[m]
        assert diff.mean() > 60, f"defect {defect} on {cls} barely visible ({diff.mean():.1f})"


def test_families_cover_the_brief():
    assert set(TEXTURE_FAMILIES) == {"stripes", "weave", "marble", "dots"}
    assert set(OBJECT_FAMILIES) == {"disc", "pill", "ring"}
    assert set(SYNTHETIC_CLASSES.values()) == set(TEXTURE_FAMILIES) | set(OBJECT_FAMILIES)


def test_render_sample_is_deterministic_and_varies():
    a1, m1 = render_sample("bottle_cap", "hole", seed=5, image_size=SIZE)
    a2, m2 = render_sample("bottle_cap", "hole", seed=5, image_size=SIZE)
    b, _ = render_sample("bottle_cap", "hole", seed=6, image_size=SIZE)
    assert np.array_equal(a1, a2) and np.array_equal(m1, m2) and not np.array_equal(a1, b)
