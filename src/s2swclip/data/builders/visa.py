"""VisA: the items come from the dataset's split file (``split_csv/1cls.csv``)."""

from __future__ import annotations

import csv
import os

from ...errors import S2SWError, first_line
from .common import _check_root, _finish, _warn_missing

__all__ = ["build_visa"]


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
        raise S2SWError(f"VisA: cannot read {csv_path} ({first_line(exc)}) — replace it with the original "
                        f"1cls.csv.") from None
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
