"""Write ``meta.json`` dataset descriptions from each dataset's original download layout.

Every builder takes the dataset root, scans it, and returns the meta dict
``{"train": {cls: [item...]}, "test": {cls: [item...]}}`` with paths relative to the root;
with ``write=True`` (the default) it also writes ``<root>/meta.json`` atomically (a temporary
file in the same folder, then ``os.replace``). :func:`build_meta` is the one-call entry point
and returns counts per class and split.

Masks are paired with images by file stem (``000.png`` <-> ``000.png`` / ``000_mask.png`` /
``ISIC_0000003_Segmentation.png`` / ``0002_label.PNG`` / ``10000_GT.png`` / ``p1.tiff``); if no
stem matches at all in a folder pair but the counts are equal, they are paired in sorted
order, as the authors' scripts do. An anomalous image whose mask cannot be found gets
``mask_path ""`` (image-level metrics only) and a warning.

Datasets used only for testing (the medical sets, VisA's test-only variants) get an empty
``"train"`` mapping, like the authors' files.
"""

from __future__ import annotations

import csv
import json
import os
import re
import warnings
from typing import Callable, Iterable, Sequence

from ..errors import S2SWError
from ..fileio import atomic_write_text

__all__ = [
    "BUILDERS",
    "build_meta",
    "write_meta",
    "summarize_meta",
    "build_mvtec",
    "build_visa",
    "build_mpdd",
    "build_btad",
    "build_sdd",
    "build_dagm",
    "build_dtd",
    "build_headct",
    "build_brainmri",
    "build_br35h",
    "build_isic",
    "build_colondb",
    "build_clinicdb",
    "build_kvasir",
    "build_endo",
    "build_tn3k",
    "build_mvtec_style",
    "IMAGE_EXTENSIONS",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

MVTEC_CLASSES = (
    "bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut",
    "pill", "screw", "tile", "toothbrush", "transistor", "wood", "zipper",
)
VISA_CLASSES = (
    "candle", "capsules", "cashew", "chewinggum", "fryum", "macaroni1", "macaroni2",
    "pcb1", "pcb2", "pcb3", "pcb4", "pipe_fryum",
)
MPDD_CLASSES = ("bracket_black", "bracket_brown", "bracket_white", "connector", "metal_plate", "tubes")
BTAD_CLASSES = ("01", "02", "03")
DTD_CLASSES = (
    "Blotchy_099", "Fibrous_183", "Marbled_078", "Matted_069", "Mesh_114", "Perforated_037",
    "Stratified_154", "Woven_001", "Woven_068", "Woven_104", "Woven_125", "Woven_127",
)

_MASK_SUFFIXES = ("", "_mask", "_segmentation", "_label", "_gt", "_seg", "-mask", "_m")


# --------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------
def _natural_key(name: str):
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def _is_hidden(name: str) -> bool:
    return name.startswith(".") or name.startswith("._") or name in ("__MACOSX", "Thumbs.db")


def _is_image(name: str) -> bool:
    return not _is_hidden(name) and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _subdirs(path: str) -> list[str]:
    try:
        names = os.listdir(path)
    except OSError:
        return []
    return sorted((n for n in names if not _is_hidden(n) and os.path.isdir(os.path.join(path, n))), key=_natural_key)


def _images(path: str) -> list[str]:
    """Sorted absolute paths of the image files directly in ``path``."""
    try:
        names = os.listdir(path)
    except OSError:
        return []
    names = [n for n in names if _is_image(n) and os.path.isfile(os.path.join(path, n))]
    return [os.path.join(path, n) for n in sorted(names, key=_natural_key)]


def _child(path: str, *names: str) -> str | None:
    """Case-insensitive lookup of the first existing child directory among ``names``."""
    try:
        entries = {n.lower(): n for n in os.listdir(path) if os.path.isdir(os.path.join(path, n))}
    except OSError:
        return None
    for name in names:
        hit = entries.get(name.lower())
        if hit is not None:
            return os.path.join(path, hit)
    return None


def _walk_dirs(root: str, max_depth: int) -> Iterable[str]:
    """Breadth-first directories under ``root`` (root first), at most ``max_depth`` levels down."""
    level = [root]
    for depth in range(max_depth + 1):
        nxt = []
        for d in level:
            yield d
            if depth < max_depth:
                nxt.extend(os.path.join(d, s) for s in _subdirs(d))
        level = nxt


def _find_dir(root: str, predicate: Callable[[str], bool], max_depth: int = 2) -> str | None:
    for d in _walk_dirs(root, max_depth):
        if predicate(d):
            return d
    return None


def _rel(root: str, path: str) -> str:
    return os.path.relpath(path, root).replace(os.sep, "/")


def _item(root: str, img: str, mask: str, cls: str, specie: str, anomaly: int) -> dict:
    return {
        "img_path": _rel(root, img),
        "mask_path": _rel(root, mask) if mask else "",
        "cls_name": cls,
        "specie_name": specie,
        "anomaly": int(anomaly),
    }


def _check_root(root, dataset: str) -> str:
    path = os.path.abspath(os.fspath(root))
    if not os.path.isdir(path):
        raise S2SWError(f"{dataset} root not found or not a folder: {path} — pass the folder the {dataset} download was extracted to.")
    return path


def _stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def _pair_masks(images: Sequence[str], masks: Sequence[str]) -> dict[str, str]:
    """Pair image files with mask files; returns {image path: mask path} for the pairs found.

    Matching is by stem with the usual mask suffixes/prefixes (case-insensitive). When not a
    single image matches but both lists have the same length, they are paired in sorted order.
    """
    by_stem: dict[str, str] = {}
    for m in masks:
        by_stem.setdefault(_stem(m).lower(), m)
    out: dict[str, str] = {}
    used: set[str] = set()
    for img in images:
        s = _stem(img).lower()
        cands = [s + suf for suf in _MASK_SUFFIXES] + ["p" + s, "mask_" + s, s.replace("image", "mask")]
        for c in cands:
            m = by_stem.get(c)
            if m is not None and m not in used and os.path.normcase(m) != os.path.normcase(img):
                out[img] = m
                used.add(m)
                break
    if not out and images and len(images) == len(masks):
        out = dict(zip(images, masks))
    return out


def _warn_missing(dataset: str, missing: list[str]) -> None:
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        warnings.warn(
            f"{dataset}: no mask found for anomalous image {missing[0]}{more}; such images get mask_path \"\" "
            f"and count for image-level metrics only.",
            stacklevel=3,
        )


def write_meta(meta: dict, root: str | os.PathLike, meta_path: str | os.PathLike | None = None) -> str:
    """Write ``meta`` as JSON to ``meta_path`` (default ``<root>/meta.json``) atomically.

    The JSON goes to a temporary file in the destination folder, is flushed to disk, then
    ``os.replace``-d over the destination, so readers never see a half-written file. Returns
    the destination path; raises :class:`S2SWError` when the folder is not writable.
    """
    dest = os.path.abspath(os.fspath(meta_path) if meta_path else os.path.join(os.fspath(root), "meta.json"))
    try:
        atomic_write_text(dest, json.dumps(meta, indent=4) + "\n", make_parents=False)
    except OSError as exc:
        raise S2SWError(f"cannot write {dest} ({exc.strerror or exc}) — make the folder writable or pass another meta_path.") from None
    return dest


def _finish(meta: dict, root: str, write: bool, meta_path=None) -> dict:
    if write:
        write_meta(meta, root, meta_path)
    return meta


def _empty_error(dataset: str, root: str, expected: str) -> S2SWError:
    return S2SWError(f"{root} does not look like {dataset}: expected {expected} — point to the right folder.")


# --------------------------------------------------------------------------------------------
# MVTec-style layouts (MVTec AD, MPDD, BTAD, DTD-Synthetic, user folders)
# --------------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------------
# VisA
# --------------------------------------------------------------------------------------------
def build_visa(root, *, write: bool = True, meta_path=None, split_csv: str | os.PathLike | None = None) -> dict:
    """Build ``meta.json`` for VisA from its ``split_csv/1cls.csv`` (the "1cls" split).

    Expected tree (as extracted from ``VisA_20220922.tar`` plus the split file from the VisA
    repository, amazon-science/spot-diff)::

        root/split_csv/1cls.csv          columns: object,split,label,image,mask
        root/candle/Data/Images/Normal/0000.JPG
        root/candle/Data/Images/Anomaly/000.JPG
        root/candle/Data/Masks/Anomaly/000.png
        ...

    CSV paths are relative to ``root``; ``label`` is ``normal`` or ``anomaly``. Another split
    file can be given with ``split_csv``.
    """
    root = _check_root(root, "VisA")
    if split_csv is not None:
        csv_path = os.path.abspath(os.fspath(split_csv))
        if not os.path.isfile(csv_path):
            raise S2SWError(f"VisA split file not found: {csv_path} — pass the path of split_csv/1cls.csv.")
    else:
        csv_path = os.path.join(root, "split_csv", "1cls.csv")
        if not os.path.isfile(csv_path):
            raise S2SWError(
                f"VisA: {csv_path} not found — download split_csv/1cls.csv from the VisA repository "
                f"(amazon-science/spot-diff) into {root}/split_csv/, or pass split_csv=."
            )
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise S2SWError(f"VisA: cannot read {csv_path} ({exc}) — replace it with the original 1cls.csv.") from None
    cols = [h.strip().lower() for h in (header or [])]
    need = ("object", "split", "label", "image")
    if any(c not in cols for c in need):
        raise S2SWError(f"VisA: {csv_path} must have the columns object,split,label,image,mask (found: {','.join(cols) or 'none'}) — use the original 1cls.csv.")
    ix = {c: cols.index(c) for c in cols}
    meta: dict = {"train": {}, "test": {}}
    missing_files: list[str] = []
    missing_masks: list[str] = []
    for n, row in enumerate(rows, start=2):
        if not row or all(not c.strip() for c in row):
            continue
        try:
            obj, split, label, img = (row[ix[c]].strip() for c in need)
            mask = row[ix["mask"]].strip() if "mask" in ix and ix["mask"] < len(row) else ""
        except IndexError:
            raise S2SWError(f"VisA: {csv_path} line {n} has too few columns — use the original 1cls.csv.") from None
        split = split.lower()
        if split not in meta:
            meta[split] = {}
        is_abn = label.lower() in ("anomaly", "abnormal", "1", "bad")
        img_abs = os.path.join(root, img)
        if not os.path.isfile(img_abs):
            missing_files.append(img)
        mask_rel = ""
        if is_abn:
            if mask and os.path.isfile(os.path.join(root, mask)):
                mask_rel = mask.replace("\\", "/")
            else:
                missing_masks.append(img)
        for s in meta:
            meta[s].setdefault(obj, [])
        meta[split][obj].append(
            {"img_path": img.replace("\\", "/"), "mask_path": mask_rel, "cls_name": obj, "specie_name": "", "anomaly": int(is_abn)}
        )
    if not any(meta[s][c] for s in meta for c in meta[s]):
        raise S2SWError(f"VisA: {csv_path} lists no images — use the original 1cls.csv.")
    if missing_files:
        raise S2SWError(
            f"VisA: {len(missing_files)} image(s) listed in {os.path.basename(csv_path)} are missing under {root}, "
            f"e.g. {missing_files[0]} — root must be the folder holding candle/, capsules/, ... and split_csv/."
        )
    _warn_missing("VisA", missing_masks)
    return _finish(meta, root, write, meta_path)


# --------------------------------------------------------------------------------------------
# SDD (KolektorSDD)
# --------------------------------------------------------------------------------------------
def _label_nonzero(path: str) -> bool:
    import numpy as np
    from PIL import Image

    try:
        with Image.open(path) as im:
            return bool(np.any(np.asarray(im) > 0))
    except (OSError, ValueError) as exc:
        raise S2SWError(f"cannot read label image {path} ({exc}) — re-extract the dataset.") from None


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


# --------------------------------------------------------------------------------------------
# DAGM
# --------------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------------
# image-level medical sets (no masks)
# --------------------------------------------------------------------------------------------
def _binary_folders(
    root: str,
    base: str,
    cls: str,
    normal: Sequence[str],
    abnormal: Sequence[str],
) -> list[dict]:
    items = []
    for name in list(normal) + list(abnormal):
        d = _child(base, name)
        if d is None:
            continue
        is_abn = name in abnormal
        for img in _images(d):
            items.append(_item(root, img, "", cls, os.path.basename(d), int(is_abn)))
    return items


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
    items = _binary_folders(root, base, "brain", ("no",), ("yes",))
    if not items:
        raise _empty_error(dataset, root, "images in no/ and yes/")
    return _finish({"train": {}, "test": {"brain": items}}, root, write, meta_path)


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
    items = _binary_folders(root, base, "brain", ("no",), ("yes",))
    if not items:
        raise _empty_error(dataset, root, "images in no/ and yes/")
    return _finish({"train": {}, "test": {"brain": items}}, root, write, meta_path)


def _read_headct_labels(path: str) -> dict[int, int]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise S2SWError(f"HeadCT: cannot read {path} ({exc}) — use the original labels.csv.") from None
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
        items = _binary_folders(root, base, "brain", ("no",), ("yes",))
        if items:
            return _finish({"train": {}, "test": {"brain": items}}, root, write, meta_path)
    base = _mvtec_base(root)
    if base is not None:
        meta, _ = _scan_mvtec_style(root, base, dataset, normal_names=("good", "normal"), with_masks=False, splits=("test",))
        if any(meta["test"].values()):
            return _finish({"train": {}, "test": meta["test"]}, root, write, meta_path)
    raise _empty_error(dataset, root, "labels.csv with head_ct/head_ct/NNN.png images, or no/ and yes/ folders, or <class>/test/{good,<other>}")


# --------------------------------------------------------------------------------------------
# pixel-level medical sets: one folder of images + one folder of masks
# --------------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------------------------
BUILDERS: dict[str, Callable[..., dict]] = {
    "mvtec": build_mvtec,
    "visa": build_visa,
    "mpdd": build_mpdd,
    "btad": build_btad,
    "sdd": build_sdd,
    "dagm": build_dagm,
    "dtd": build_dtd,
    "headct": build_headct,
    "brainmri": build_brainmri,
    "br35h": build_br35h,
    "isic": build_isic,
    "colondb": build_colondb,
    "clinicdb": build_clinicdb,
    "kvasir": build_kvasir,
    "endo": build_endo,
    "tn3k": build_tn3k,
    "folder": build_mvtec_style,
}

_ALIASES = {
    "mvtecad": "mvtec", "mvtec_ad": "mvtec", "dtdsynthetic": "dtd", "kolektorsdd": "sdd", "ksdd": "sdd",
    "ksdd2": "sdd", "kolektorsdd2": "sdd", "headct": "headct", "brainmri": "brainmri", "br35": "br35h",
    "isic2016": "isic", "isbi": "isic", "isbi2016": "isic", "cvccolondb": "colondb", "cvcclinicdb": "clinicdb",
    "kvasirseg": "kvasir", "endotect": "endo", "mvtecstyle": "folder", "custom": "folder", "generic": "folder",
    "own": "folder", "user": "folder",
}


def _canonical(name: str) -> str:
    key = re.sub(r"[\s_\-]+", "", str(name).lower())
    if key in BUILDERS:
        return key
    if key in _ALIASES:
        return _ALIASES[key]
    raise S2SWError(f"unknown dataset {name!r} — use one of: {', '.join(BUILDERS)}.")


def summarize_meta(meta: dict) -> dict:
    """Counts of a meta dict: ``{split: {cls: {"normal", "anomaly", "with_mask"}}}`` plus totals."""
    splits: dict = {}
    total = 0
    missing = 0
    for split, classes in meta.items():
        splits[split] = {}
        for cls, items in classes.items():
            n_abn = sum(1 for it in items if int(it.get("anomaly", 0)) == 1)
            n_mask = sum(1 for it in items if int(it.get("anomaly", 0)) == 1 and it.get("mask_path"))
            splits[split][cls] = {"normal": len(items) - n_abn, "anomaly": n_abn, "with_mask": n_mask}
            total += len(items)
            missing += n_abn - n_mask
    return {"splits": splits, "total": total, "anomalous_without_mask": missing}


def build_meta(name: str, root: str | os.PathLike, *, meta_path: str | os.PathLike | None = None, **kwargs) -> dict:
    """Scan ``root`` in the layout of dataset ``name`` and write ``meta.json``; return a summary.

    ``name`` is a key of :data:`BUILDERS` (case, ``-`` and ``_`` ignored; aliases such as
    ``mvtec_ad``, ``kolektorsdd``, ``cvc-clinicdb`` and ``custom`` work). Extra keyword
    arguments go to the builder (e.g. ``split_csv=`` for VisA). The summary is::

        {"dataset": name, "root": abs root, "meta_path": written file,
         "splits": {split: {cls: {"normal": n, "anomaly": n, "with_mask": n}}},
         "total": n, "anomalous_without_mask": n}
    """
    key = _canonical(name)
    root_abs = os.path.abspath(os.fspath(root))
    meta = BUILDERS[key](root_abs, write=True, meta_path=meta_path, **kwargs)
    summary = summarize_meta(meta)
    dest = os.path.abspath(os.fspath(meta_path)) if meta_path else os.path.join(root_abs, "meta.json")
    return {"dataset": key, "root": root_abs, "meta_path": dest, **summary}
