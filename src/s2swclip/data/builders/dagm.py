"""DAGM 2007 (Kaggle upload): ``ClassN/{Train,Test}`` with ``Label/<stem>_label.PNG`` masks."""

from __future__ import annotations

import os
import re

from .common import _check_root, _child, _empty_error, _find_dir, _finish, _images, _item, _stem, _subdirs

__all__ = ["build_dagm"]


def _dagm_folder(root: str, folder: str, cls: str) -> list[dict]:
    label_dir = _child(folder, "Label", "Labels")
    labels = [f for f in _images(label_dir)] if label_dir else []
    imgs = _images(folder)
    by_stem = {}
    for lab in labels:
        s = _stem(lab)
        s = re.sub(r"_label$", "", s, flags=re.I)
        by_stem[s.lower()] = lab
    items = []
    for img in imgs:
        lab = by_stem.get(_stem(img).lower(), "")
        items.append(_item(root, img, lab, cls, "defect" if lab else "good", int(bool(lab))))
    return items


def build_dagm(root, *, write: bool = True, meta_path=None) -> dict:
    """Build ``meta.json`` for DAGM 2007 (the Kaggle upload with Train/Test folders).

    Expected tree (root may be the folder holding ``DAGM_KaggleUpload``)::

        root/Class1/Train/0001.PNG
        root/Class1/Train/Label/0002_label.PNG      one label image per defective image
        root/Class1/Test/0001.PNG
        root/Class1/Test/Label/0003_label.PNG
        ... Class10

    An image is anomalous when a ``<stem>_label`` image exists. A class folder without
    Train/Test (images directly inside, labels in ``Label/``) goes to the test split.
    """
    dataset = "DAGM"
    root = _check_root(root, dataset)
    pat = re.compile(r"class\d+", re.I)
    base = _find_dir(root, lambda d: any(pat.fullmatch(s) for s in _subdirs(d)), max_depth=2)
    if base is None:
        raise _empty_error(dataset, root, "Class1/ ... Class10/ folders, each with Train/ and Test/ (and Label/ inside them)")
    meta: dict = {"train": {}, "test": {}}
    for cls in _subdirs(base):
        if not pat.fullmatch(cls):
            continue
        cdir = os.path.join(base, cls)
        tr, te = _child(cdir, "Train"), _child(cdir, "Test")
        if tr is None and te is None:
            meta["train"][cls] = []
            meta["test"][cls] = _dagm_folder(root, cdir, cls)
        else:
            meta["train"][cls] = _dagm_folder(root, tr, cls) if tr else []
            meta["test"][cls] = _dagm_folder(root, te, cls) if te else []
    if not any(meta[s][c] for s in meta for c in meta[s]):
        raise _empty_error(dataset, root, "ClassN/Train and ClassN/Test folders with .PNG images")
    return _finish(meta, root, write, meta_path)
