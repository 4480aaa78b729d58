"""MVTec-style layouts: MVTec AD, MPDD, BTAD, DTD-Synthetic and your own folders.

The common tree is ``<class>/train/<normal>``, ``<class>/test/<normal or defect>`` and
``<class>/ground_truth/<defect>`` (masks); the folder holding the class folders may sit up to
two levels below the root. SDD's and HeadCT's converted copies use the same scanner.
"""

from __future__ import annotations

import os
from typing import Sequence

from .common import (
    _check_root, _child, _empty_error, _find_dir, _finish, _images, _item, _natural_key,
    _pair_masks, _rel, _subdirs, _warn_missing,
)

__all__ = ["build_mvtec", "build_mpdd", "build_btad", "build_dtd", "build_mvtec_style"]

MVTEC_CLASSES = (
    "bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut",
    "pill", "screw", "tile", "toothbrush", "transistor", "wood", "zipper",
)
MPDD_CLASSES = ("bracket_black", "bracket_brown", "bracket_white", "connector", "metal_plate", "tubes")
BTAD_CLASSES = ("01", "02", "03")
DTD_CLASSES = (
    "Blotchy_099", "Fibrous_183", "Marbled_078", "Matted_069", "Mesh_114", "Perforated_037",
    "Stratified_154", "Woven_001", "Woven_068", "Woven_104", "Woven_125", "Woven_127",
)


def _is_mvtec_class_dir(d: str) -> bool:
    return _child(d, "test") is not None or _child(d, "train") is not None


def _mvtec_base(root: str, classes: Sequence[str] | None = None) -> str | None:
    """The folder holding the class folders: ``root`` itself or a folder up to 2 levels below."""

    def ok(d: str) -> bool:
        subs = _subdirs(d)
        if classes:
            return any(s in classes and _is_mvtec_class_dir(os.path.join(d, s)) for s in subs)
        return any(_is_mvtec_class_dir(os.path.join(d, s)) for s in subs if s.lower() not in ("train", "test"))

    return _find_dir(root, ok, max_depth=2)


def _scan_mvtec_style(
    root: str,
    base: str,
    dataset: str,
    normal_names: Sequence[str] = ("good",),
    classes: Sequence[str] | None = None,
    gt_names: Sequence[str] = ("ground_truth", "groundtruth", "gt", "masks"),
    with_masks: bool = True,
    splits: Sequence[str] = ("train", "test"),
) -> tuple[dict, list[str]]:
    normal = {n.lower() for n in normal_names}
    meta: dict = {s: {} for s in splits}
    missing: list[str] = []
    class_dirs = [s for s in _subdirs(base) if _is_mvtec_class_dir(os.path.join(base, s))]
    if classes:
        class_dirs = [c for c in class_dirs if c in classes]
    for cls in class_dirs:
        cdir = os.path.join(base, cls)
        gt_root = _child(cdir, *gt_names) if with_masks else None
        for split in splits:
            sdir = _child(cdir, split)
            items: list[dict] = []
            if sdir is not None:
                species = _subdirs(sdir)
                species.sort(key=lambda s: (s.lower() not in normal, _natural_key(s)))
                for specie in species:
                    imgs = _images(os.path.join(sdir, specie))
                    is_abn = specie.lower() not in normal
                    pairs: dict[str, str] = {}
                    if is_abn and gt_root is not None:
                        gdir = _child(gt_root, specie)
                        if gdir is not None:
                            pairs = _pair_masks(imgs, _images(gdir))
                    for img in imgs:
                        mask = pairs.get(img, "") if is_abn else ""
                        if is_abn and with_masks and not mask:
                            missing.append(_rel(root, img))
                        items.append(_item(root, img, mask, cls, specie, int(is_abn)))
            meta[split][cls] = items
    return meta, missing


def _build_mvtec_like(
    root,
    dataset: str,
    classes: Sequence[str] | None,
    normal_names: Sequence[str],
    expected: str,
    write: bool,
    meta_path=None,
    restrict_classes: bool = False,
) -> dict:
    root = _check_root(root, dataset)
    base = _mvtec_base(root, classes if restrict_classes else None)
    if base is None:
        raise _empty_error(dataset, root, expected)
    meta, missing = _scan_mvtec_style(
        root, base, dataset, normal_names=normal_names, classes=classes if restrict_classes else None
    )
    if not any(meta[s][c] for s in meta for c in meta[s]):
        raise _empty_error(dataset, root, expected + " with image files in them")
    _warn_missing(dataset, missing)
    return _finish(meta, root, write, meta_path)


def build_mvtec_style(root, *, write: bool = True, meta_path=None, normal_names: Sequence[str] = ("good", "ok", "normal")) -> dict:
    """Build ``meta.json`` for a user's own MVTec-style folder.

    Expected tree (the class folder may also sit one or two levels below ``root``)::

        root/<class>/train/good/*.png                     normal training images
        root/<class>/test/good/*.png                      normal test images
        root/<class>/test/<defect>/*.png                  anomalous test images
        root/<class>/ground_truth/<defect>/<stem>_mask.png  (or <stem>.png) masks

    Normal folders are those named ``good``, ``ok`` or ``normal`` (``normal_names``); every
    other folder is a defect type. Any image extension (png/jpg/bmp/tif/webp) is accepted.
    Anomalous images without a mask get ``mask_path ""``.
    """
    return _build_mvtec_like(
        root, "MVTec-style folder", None, normal_names,
        "<class>/train/good, <class>/test/<defect> and <class>/ground_truth/<defect> folders", write, meta_path,
    )


def build_mvtec(root, *, write: bool = True, meta_path=None) -> dict:
    """Build ``meta.json`` for MVTec AD (as extracted from ``mvtec_anomaly_detection.tar.xz``).

    Expected tree::

        root/<class>/train/good/000.png
        root/<class>/test/good/000.png
        root/<class>/test/<defect>/000.png
        root/<class>/ground_truth/<defect>/000_mask.png

    with the 15 classes bottle ... zipper (a subset is fine; other class-like folders are
    included too).
    """
    return _build_mvtec_like(
        root, "MVTec AD", MVTEC_CLASSES, ("good",),
        "class folders such as bottle/ with train/good, test/<defect> and ground_truth/<defect>", write, meta_path,
    )


def build_mpdd(root, *, write: bool = True, meta_path=None) -> dict:
    """Build ``meta.json`` for MPDD (MVTec layout).

    Expected tree (classes bracket_black, bracket_brown, bracket_white, connector,
    metal_plate, tubes)::

        root/<class>/train/good/000.png
        root/<class>/test/good/000.png, root/<class>/test/<defect>/000.png
        root/<class>/ground_truth/<defect>/000_mask.png
    """
    return _build_mvtec_like(
        root, "MPDD", MPDD_CLASSES, ("good",),
        "class folders such as bracket_black/ with train/good, test/<defect> and ground_truth/<defect>", write, meta_path,
    )


def build_btad(root, *, write: bool = True, meta_path=None) -> dict:
    """Build ``meta.json`` for BTAD (``BTech_Dataset_transformed``).

    Expected tree (root may be the folder holding ``BTech_Dataset_transformed``)::

        root/01/train/ok/0000.bmp           (class 02 uses .png, 03 .bmp)
        root/01/test/ok/0000.bmp
        root/01/test/ko/0000.bmp
        root/01/ground_truth/ko/0000.png    (.bmp for class 03)

    ``ok`` is normal, ``ko`` anomalous.
    """
    return _build_mvtec_like(
        root, "BTAD", BTAD_CLASSES, ("ok", "good"),
        "class folders 01/, 02/, 03/ with train/ok, test/ok, test/ko and ground_truth/ko", write, meta_path,
    )


def build_dtd(root, *, write: bool = True, meta_path=None) -> dict:
    """Build ``meta.json`` for DTD-Synthetic (MVTec layout, 12 texture classes).

    Expected tree::

        root/<class>/train/good/000.png      e.g. <class> = Woven_001, Blotchy_099, ...
        root/<class>/test/good/000.png
        root/<class>/test/bad/000.png
        root/<class>/ground_truth/bad/000_mask.png   (or 000.png)
    """
    return _build_mvtec_like(
        root, "DTD-Synthetic", DTD_CLASSES, ("good",),
        "class folders such as Woven_001/ with train/good, test/good, test/bad and ground_truth/bad", write, meta_path,
    )
