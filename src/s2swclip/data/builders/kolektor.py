"""SDD (KolektorSDD 1 and 2, electrical commutators): original downloads and the MVTec-style copy.

In the original downloads every image has a label image beside it (``Part0_label.bmp``,
``10000_GT.png``); an image is anomalous when its label image has a non-zero pixel.
"""

from __future__ import annotations

import os
import re

from ...errors import S2SWError, first_line
from .common import (
    _check_root, _child, _empty_error, _find_dir, _finish, _images, _item, _pair_masks, _stem,
    _subdirs, _warn_missing,
)
from .mvtec_style import _mvtec_base, _scan_mvtec_style

__all__ = ["build_sdd"]


def _label_nonzero(path: str) -> bool:
    import numpy as np
    from PIL import Image

    try:
        with Image.open(path) as im:
            return bool(np.any(np.asarray(im) > 0))
    except (OSError, ValueError) as exc:
        raise S2SWError(f"cannot read label image {path} ({first_line(exc)}) — re-extract the dataset.") from None


def _label_suffix_items(root: str, folder: str, suffix: str, cls: str) -> list[dict]:
    """Items of a folder holding images and their label images ``<stem><suffix>.*``; an image
    is anomalous when its label image has a non-zero pixel (KolektorSDD 1 and 2)."""
    files = _images(folder)
    labels = [f for f in files if _stem(f).lower().endswith(suffix)]
    imgs = [f for f in files if f not in labels]
    pairs = _pair_masks(imgs, labels)
    items = []
    for img in imgs:
        lab = pairs.get(img, "")
        abn = bool(lab) and _label_nonzero(lab)
        items.append(_item(root, img, lab if abn else "", cls, "defect" if abn else "good", int(abn)))
    return items


def build_sdd(root, *, write: bool = True, meta_path=None) -> dict:
    """Build ``meta.json`` for SDD (KolektorSDD, class ``electrical_commutators``).

    Accepted trees:

    * original KolektorSDD download (all images go to the test split)::

          root/kos01/Part0.jpg, root/kos01/Part0_label.bmp, ... root/kos50/...

      an image is anomalous when its label image has a non-zero pixel;
    * KolektorSDD2: ``root/train/10000.png`` + ``root/train/10000_GT.png``, ``root/test/...``;
    * the MVTec-style conversion AnomalyCLIP uses:
      ``root/electrical_commutators/{train,test}/{good,<defect>}`` + ``ground_truth/<defect>``
      (the class folder may also be called ``electrical commutators``).
    """
    dataset = "SDD (KolektorSDD)"
    root = _check_root(root, dataset)
    cls = "electrical_commutators"
    # 1) MVTec-style conversion
    base = _mvtec_base(root)
    if base is not None:
        meta, missing = _scan_mvtec_style(root, base, dataset, normal_names=("good", "ok", "normal"))
        if any(meta[s][c] for s in meta for c in meta[s]):
            _warn_missing(dataset, missing)
            return _finish(meta, root, write, meta_path)
    # 2) original KolektorSDD: kosNN folders
    kos_base = _find_dir(root, lambda d: any(re.fullmatch(r"kos\d+", s, re.I) for s in _subdirs(d)), max_depth=2)
    if kos_base is not None:
        items = []
        for sub in _subdirs(kos_base):
            if not re.fullmatch(r"kos\d+", sub, re.I):
                continue
            items += _label_suffix_items(root, os.path.join(kos_base, sub), "_label", cls)
        if items:
            return _finish({"train": {}, "test": {cls: items}}, root, write, meta_path)
    # 3) KolektorSDD2: train/ and test/ folders with *_GT.png
    ksdd2 = _find_dir(
        root,
        lambda d: any(
            _child(d, s) is not None and any(_stem(f).lower().endswith("_gt") for f in _images(_child(d, s)))
            for s in ("train", "test")
        ),
        max_depth=2,
    )
    if ksdd2 is not None:
        meta = {"train": {cls: []}, "test": {cls: []}}
        for split in ("train", "test"):
            sdir = _child(ksdd2, split)
            if sdir is None:
                continue
            meta[split][cls] += _label_suffix_items(root, sdir, "_gt", cls)
        return _finish(meta, root, write, meta_path)
    raise _empty_error(
        dataset, root,
        "kos01/ ... kos50/ folders with PartN.jpg + PartN_label.bmp, or train/ and test/ with *_GT.png (KolektorSDD2), "
        "or electrical_commutators/{train,test,ground_truth}",
    )
