"""Image-level medical sets without masks: HeadCT, BrainMRI and Br35H (class ``brain``, test split).

Labels come from folder names (``no/`` normal, ``yes/`` anomalous) or, for HeadCT's Kaggle
download, from ``labels.csv``.
"""

from __future__ import annotations

import csv
import os
from ...errors import S2SWError, first_line
from .common import _check_root, _child, _empty_error, _find_dir, _finish, _images, _item, _stem, _walk_dirs
from .mvtec_style import _mvtec_base, _scan_mvtec_style

__all__ = ["build_headct", "build_brainmri", "build_br35h"]


def _no_yes_items(root: str, base: str) -> list[dict]:
    """Items of the images in ``base/no`` (normal) and ``base/yes`` (anomalous): class ``brain``,
    no masks, the folder's name as ``specie_name``."""
    items = []
    for name, is_abn in (("no", 0), ("yes", 1)):
        d = _child(base, name)
        if d is None:
            continue
        for img in _images(d):
            items.append(_item(root, img, "", "brain", os.path.basename(d), is_abn))
    return items


def _no_yes_meta(dataset: str, root: str, base: str, write: bool, meta_path) -> dict:
    items = _no_yes_items(root, base)
    if not items:
        raise _empty_error(dataset, root, "images in no/ and yes/")
    return _finish({"train": {}, "test": {"brain": items}}, root, write, meta_path)


def _has_no_yes(d: str) -> bool:
    return _child(d, "no") is not None and _child(d, "yes") is not None


def build_brainmri(root, *, write: bool = True, meta_path=None) -> dict:
    """Build ``meta.json`` for BrainMRI (Kaggle "Brain MRI Images for Brain Tumor Detection").

    Expected tree (image-level only, class ``brain``, all in the test split)::

        root/brain_tumor_dataset/no/*.jpg     normal
        root/brain_tumor_dataset/yes/*.jpg    tumour (anomalous)

    ``root/no`` + ``root/yes`` directly is accepted too (the archive holds both copies; the
    ``brain_tumor_dataset`` one is used when present, like AnomalyCLIP).
    """
    dataset = "BrainMRI"
    root = _check_root(root, dataset)
    cand = _child(root, "brain_tumor_dataset")
    base = cand if cand is not None and _has_no_yes(cand) else _find_dir(root, _has_no_yes, max_depth=2)
    if base is None:
        raise _empty_error(dataset, root, "brain_tumor_dataset/no and brain_tumor_dataset/yes folders (or no/ and yes/)")
    return _no_yes_meta(dataset, root, base, write, meta_path)


def build_br35h(root, *, write: bool = True, meta_path=None) -> dict:
    """Build ``meta.json`` for Br35H (Kaggle "Br35H :: Brain Tumor Detection 2020").

    Expected tree (image-level only, class ``brain``, all in the test split)::

        root/no/no0.jpg ...     normal
        root/yes/y0.jpg ...     tumour (anomalous)
        root/pred/              unlabelled images: ignored

    ``no``/``yes`` may also sit one or two levels below ``root``.
    """
    dataset = "Br35H"
    root = _check_root(root, dataset)
    base = _find_dir(root, _has_no_yes, max_depth=2)
    if base is None:
        raise _empty_error(dataset, root, "no/ and yes/ folders (pred/ is ignored)")
    return _no_yes_meta(dataset, root, base, write, meta_path)


def _read_headct_labels(path: str) -> dict[int, int]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise S2SWError(f"HeadCT: cannot read {path} ({first_line(exc)}) — use the original labels.csv.") from None
    out: dict[int, int] = {}
    for row in rows:
        if len(row) < 2:
            continue
        a, b = row[0].strip(), row[1].strip()
        if a.isdigit() and b in ("0", "1"):
            out[int(a)] = int(b)
    if not out:
        raise S2SWError(f"HeadCT: {path} has no 'id, hemorrhage' rows — use the original labels.csv.")
    return out


def build_headct(root, *, write: bool = True, meta_path=None) -> dict:
    """Build ``meta.json`` for HeadCT (Kaggle "Head CT - hemorrhage"); image-level only.

    Accepted trees (class ``brain`` as in the authors' files, all in the test split):

    * original Kaggle download::

          root/labels.csv                 columns: id, hemorrhage (0/1)
          root/head_ct/head_ct/000.png    (or root/head_ct/000.png, or root/000.png)

      image ``NNN.png`` gets the label of id ``NNN``;
    * ``root/no/*.png`` + ``root/yes/*.png``;
    * AnomalyCLIP's conversion ``root/<class>/test/good`` + ``root/<class>/test/<other>``.
    """
    dataset = "HeadCT"
    root = _check_root(root, dataset)
    labels_csv = None
    for d in _walk_dirs(root, 1):
        p = os.path.join(d, "labels.csv")
        if os.path.isfile(p):
            labels_csv = p
            break
    if labels_csv is not None:
        labels = _read_headct_labels(labels_csv)

        def numbered(d: str) -> bool:
            return any(_stem(f).isdigit() and int(_stem(f)) in labels for f in _images(d))

        img_dir = _find_dir(root, numbered, max_depth=3)
        if img_dir is None:
            raise _empty_error(dataset, root, f"images named 000.png, 001.png, ... next to {labels_csv} (e.g. head_ct/head_ct/)")
        items = []
        for img in _images(img_dir):
            s = _stem(img)
            if not s.isdigit() or int(s) not in labels:
                continue
            abn = labels[int(s)]
            items.append(_item(root, img, "", "brain", "hemorrhage" if abn else "normal", abn))
        return _finish({"train": {}, "test": {"brain": items}}, root, write, meta_path)
    base = _find_dir(root, _has_no_yes, max_depth=2)
    if base is not None:
        items = _no_yes_items(root, base)
        if items:
            return _finish({"train": {}, "test": {"brain": items}}, root, write, meta_path)
    base = _mvtec_base(root)
    if base is not None:
        meta, _ = _scan_mvtec_style(root, base, dataset, normal_names=("good", "normal"), with_masks=False, splits=("test",))
        if any(meta["test"].values()):
            return _finish({"train": {}, "test": meta["test"]}, root, write, meta_path)
    raise _empty_error(dataset, root, "labels.csv with head_ct/head_ct/NNN.png images, or no/ and yes/ folders, or <class>/test/{good,<other>}")
