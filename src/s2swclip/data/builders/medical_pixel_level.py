"""Pixel-level medical sets: one folder of images and one of masks, all anomalous, test split.

ISIC (ISBI 2016, class ``skin``), CVC-ColonDB, CVC-ClinicDB, Kvasir-SEG and Endo (class
``colon``) and TN3K (class ``thyroid``). Endo may also hold a folder of normal images.
"""

from __future__ import annotations

import os
import re
from typing import Sequence

from .common import (
    _check_root, _child, _empty_error, _find_dir, _finish, _images, _item, _natural_key,
    _pair_masks, _rel, _stem, _subdirs, _walk_dirs, _warn_missing,
)

__all__ = ["build_isic", "build_colondb", "build_clinicdb", "build_kvasir", "build_endo", "build_tn3k"]


def _pairs_items(root: str, imgs: list[str], masks: list[str], cls: str, dataset: str, specie: str = "") -> list[dict]:
    pairs = _pair_masks(imgs, masks)
    missing = [_rel(root, i) for i in imgs if i not in pairs]
    _warn_missing(dataset, missing)
    return [_item(root, img, pairs.get(img, ""), cls, specie, 1) for img in imgs]


def _image_mask_dirs(root: str, img_names: Sequence[str], mask_names: Sequence[str], max_depth: int = 3):
    """First folder (breadth-first) having an image child folder and a mask child folder."""
    for d in _walk_dirs(root, max_depth):
        i, m = _child(d, *img_names), _child(d, *mask_names)
        if i is not None and m is not None and _images(i):
            return i, m
    return None


def _build_image_mask(root, dataset, cls, img_names, mask_names, expected, write, meta_path, flat_prefix_p=False):
    root = _check_root(root, dataset)
    found = _image_mask_dirs(root, img_names, mask_names)
    if found is not None:
        imgs = _images(found[0])
        items = _pairs_items(root, imgs, _images(found[1]), cls, dataset)
        return _finish({"train": {}, "test": {cls: items}}, root, write, meta_path)
    if flat_prefix_p:
        # original CVC-ColonDB: 1.tiff, ..., and masks p1.tiff, ... in one folder
        def flat(d: str) -> bool:
            stems = {_stem(f).lower() for f in _images(d)}
            return any(s.isdigit() and ("p" + s) in stems for s in stems)

        d = _find_dir(root, flat, max_depth=2)
        if d is not None:
            files = _images(d)
            masks = [f for f in files if re.fullmatch(r"p\d+", _stem(f), re.I)]
            imgs = [f for f in files if _stem(f).isdigit()]
            items = _pairs_items(root, imgs, masks, cls, dataset)
            return _finish({"train": {}, "test": {cls: items}}, root, write, meta_path)
    raise _empty_error(dataset, root, expected)


def build_colondb(root, *, write: bool = True, meta_path=None) -> dict:
    """Build ``meta.json`` for CVC-ColonDB (class ``colon``, all anomalous, test split).

    Accepted trees::

        root/images/1.png ...   root/masks/1.png ...      (Kaggle / PraNet TestDataset copy)
        root/1.tiff ...         root/p1.tiff ...          (original release: masks prefixed "p")
    """
    return _build_image_mask(
        root, "CVC-ColonDB", "colon", ("images", "image", "Original"), ("masks", "mask", "Ground Truth", "GroundTruth", "gt"),
        "images/ and masks/ folders (or N.tiff with pN.tiff masks)", write, meta_path, flat_prefix_p=True,
    )


def build_clinicdb(root, *, write: bool = True, meta_path=None) -> dict:
    """Build ``meta.json`` for CVC-ClinicDB (class ``colon``, all anomalous, test split).

    Accepted trees (the first found, breadth-first; PNG before TIF)::

        root/Original/1.tif ...        root/Ground Truth/1.tif ...   (original release)
        root/PNG/Original/1.png ...    root/PNG/Ground Truth/1.png   (Kaggle copy; also TIF/)
        root/images/1.png ...          root/masks/1.png ...          (PraNet TestDataset copy)
    """
    return _build_image_mask(
        root, "CVC-ClinicDB", "colon", ("Original", "images", "image"), ("Ground Truth", "GroundTruth", "ground_truth", "masks", "mask"),
        "Original/ and 'Ground Truth'/ folders (or images/ and masks/)", write, meta_path,
    )


def build_kvasir(root, *, write: bool = True, meta_path=None) -> dict:
    """Build ``meta.json`` for Kvasir-SEG (class ``colon``, all anomalous, test split).

    Expected tree (root may be the folder holding ``Kvasir-SEG``)::

        root/images/<id>.jpg
        root/masks/<id>.jpg        (same file names)
    """
    return _build_image_mask(
        root, "Kvasir", "colon", ("images", "image"), ("masks", "mask"),
        "images/ and masks/ folders (Kvasir-SEG)", write, meta_path,
    )


def build_tn3k(root, *, write: bool = True, meta_path=None) -> dict:
    """Build ``meta.json`` for TN3K thyroid-nodule ultrasound (class ``thyroid``, test split).

    Expected tree (root may be the folder holding ``tn3k``)::

        root/test-image/0000.jpg
        root/test-mask/0000.jpg     (same file names; trainval-* folders are ignored)
    """
    return _build_image_mask(
        root, "TN3K", "thyroid", ("test-image", "test_image"), ("test-mask", "test_mask"),
        "test-image/ and test-mask/ folders", write, meta_path,
    )


def build_endo(root, *, write: bool = True, meta_path=None) -> dict:
    """Build ``meta.json`` for Endo (EndoTect 2020 segmentation test set; class ``colon``).

    Expected tree::

        root/masks/<id>.png        masks for the anomalous images
        root/<folder>/<id>.jpg     every other image folder (e.g. images/) is anomalous,
        root/good/<id>.jpg         except one named good/normal (normal, optional)
    """
    dataset = "Endo"
    root = _check_root(root, dataset)
    base = _find_dir(root, lambda d: _child(d, "masks", "mask") is not None and any(
        _images(os.path.join(d, s)) for s in _subdirs(d) if s.lower() not in ("masks", "mask")), max_depth=2)
    if base is None:
        raise _empty_error(dataset, root, "a masks/ folder next to image folder(s) such as images/")
    mdir = _child(base, "masks", "mask")
    masks = _images(mdir)
    items = []
    normal = ("good", "normal")
    folders = [s for s in _subdirs(base) if os.path.join(base, s) != mdir]
    for sub in sorted(folders, key=lambda s: (s.lower() not in normal, _natural_key(s))):
        imgs = _images(os.path.join(base, sub))
        if sub.lower() in normal:
            items += [_item(root, i, "", "colon", sub, 0) for i in imgs]
        else:
            items += _pairs_items(root, imgs, masks, "colon", dataset, specie=sub)
    return _finish({"train": {}, "test": {"colon": items}}, root, write, meta_path)


def build_isic(root, *, write: bool = True, meta_path=None) -> dict:
    """Build ``meta.json`` for ISIC (ISBI 2016 skin-lesion segmentation test set; class ``skin``).

    Accepted trees (all anomalous, test split)::

        root/ISBI2016_ISIC_Part1_Test_Data/ISIC_0000003.jpg
        root/ISBI2016_ISIC_Part1_Test_GroundTruth/ISIC_0000003_Segmentation.png

        root/skin/test/<folder>/ISIC_*.jpg + root/skin/ISBI2016_ISIC_Part1_Test_GroundTruth/  (AnomalyCLIP)
        root/images/ + root/masks/

    Other ISIC releases work when the image folder name contains "Data" or "Input" and the
    mask folder name contains "GroundTruth".
    """
    dataset = "ISIC"
    root = _check_root(root, dataset)
    cls = "skin"

    def is_gt(name: str) -> bool:
        n = name.lower().replace("_", "").replace(" ", "")
        return "groundtruth" in n or n in ("masks", "mask")

    def is_data(name: str) -> bool:
        n = name.lower()
        return not is_gt(name) and ("data" in n or "input" in n or n in ("images", "image"))

    for d in _walk_dirs(root, 2):
        subs = _subdirs(d)
        gts = [s for s in subs if is_gt(s)]
        if not gts:
            continue
        gdir = os.path.join(d, gts[0])
        datas = [s for s in subs if is_data(s) and _images(os.path.join(d, s))]
        if datas:
            imgs = _images(os.path.join(d, datas[0]))
            items = _pairs_items(root, imgs, _images(gdir), cls, dataset)
            return _finish({"train": {}, "test": {cls: items}}, root, write, meta_path)
        tdir = _child(d, "test")
        if tdir is not None:
            items = []
            for sub in _subdirs(tdir):
                imgs = _images(os.path.join(tdir, sub))
                if sub.lower() in ("good", "normal"):
                    items += [_item(root, i, "", cls, sub, 0) for i in imgs]
                else:
                    items += _pairs_items(root, imgs, _images(gdir), cls, dataset, specie=sub)
            if items:
                return _finish({"train": {}, "test": {cls: items}}, root, write, meta_path)
    raise _empty_error(dataset, root, "ISBI2016_ISIC_Part1_Test_Data/ and ISBI2016_ISIC_Part1_Test_GroundTruth/ folders")
