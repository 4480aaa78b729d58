"""Shared helpers of the builders: folder scanning, mask pairing, items, writing meta.json.

Scanning skips hidden entries (``.x``, ``._x``, ``__MACOSX``, ``Thumbs.db``) and lists image
files by :func:`s2swclip.data.images.is_image_name` (every format Pillow decodes), in natural
order (``2.png`` before ``10.png``).

Masks are paired with images by file stem (``000.png`` <-> ``000.png`` / ``000_mask.png`` /
``ISIC_0000003_Segmentation.png`` / ``0002_label.PNG`` / ``10000_GT.png`` / ``p1.tiff``); if no
stem matches at all in a folder pair but the counts are equal, they are paired in sorted
order, as the authors' scripts do. An anomalous image whose mask cannot be found gets
``mask_path ""`` (image-level metrics only) and a warning is logged.

An item is one entry of ``meta.json``: ``{"img_path", "mask_path", "cls_name", "specie_name",
"anomaly"}`` with paths relative to the dataset root and ``/`` separators.
"""

from __future__ import annotations

import json
import logging
import os
import re
from typing import Callable, Iterable, Sequence

from ...errors import S2SWError, first_line
from ...fileio import atomic_write_text
from ..images import is_image_name

__all__ = ["write_meta", "summarize_meta"]

log = logging.getLogger(__name__)

_MASK_SUFFIXES = ("", "_mask", "_segmentation", "_label", "_gt", "_seg", "-mask", "_m")


def _natural_key(name: str):
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def _is_hidden(name: str) -> bool:
    return name.startswith(".") or name in ("__MACOSX", "Thumbs.db")


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
    names = [n for n in names if is_image_name(n) and os.path.isfile(os.path.join(path, n))]
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
        log.warning(
            "%s: no mask found for anomalous image %s%s; such images get mask_path \"\" and count for "
            "image-level metrics only.", dataset, missing[0], more,
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
        raise S2SWError(f"cannot write {dest} ({first_line(exc)}) — make the folder writable or pass another meta_path.") from None
    return dest


def _finish(meta: dict, root: str, write: bool, meta_path=None) -> dict:
    if write:
        write_meta(meta, root, meta_path)
    return meta


def _empty_error(dataset: str, root: str, expected: str) -> S2SWError:
    return S2SWError(f"{root} does not look like {dataset}: expected {expected} — point to the right folder.")


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
