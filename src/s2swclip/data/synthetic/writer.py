"""Writing a synthetic MVTec-style dataset plus ``meta.json`` (:func:`generate_dataset`)."""

from __future__ import annotations

import os
import shutil
from typing import Iterable, Sequence

import numpy as np

from ...errors import S2SWError
from .classes import DEFECT_TYPES, SYNTHETIC_CLASSES, _crc, _family, class_defects

_MARKER = ".s2swclip-synthetic"
from .defects import render_sample

_MARKER = ".s2swclip-synthetic"


# --------------------------------------------------------------------------------------------
def _save_png(arr: np.ndarray, path: str) -> None:
    from PIL import Image

    Image.fromarray(arr).save(path, format="PNG", compress_level=1)


def _check_count(name: str, n) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise S2SWError(f"{name} must be a non-negative integer, got {n!r}.")
    return int(n)


def generate_dataset(
    out_dir: str | os.PathLike,
    classes: Iterable[str] | None = None,
    n_train_good: int = 20,
    n_test_good: int = 10,
    n_test_defect: int = 14,
    image_size: int = 256,
    seed: int = 0,
    defects: Sequence[str] | None = None,
) -> str:
    """Write a synthetic MVTec-style dataset plus ``meta.json``; returns the absolute ``out_dir``.

    Tree::

        out_dir/<cls>/train/good/000.png              n_train_good normal images
        out_dir/<cls>/test/good/000.png               n_test_good normal images
        out_dir/<cls>/test/<defect>/000.png           n_test_defect defective images per class,
        out_dir/<cls>/ground_truth/<defect>/000_mask.png   spread round-robin over the defects
        out_dir/meta.json                             train = train/good, test = test/*

    ``classes`` are names from :data:`SYNTHETIC_CLASSES` (default: all) or family names;
    ``defects`` restricts the defect types (``missing_part`` is skipped for textures). Masks
    are 0/255 PNGs equal to the pixels the defect changed. Same arguments -> same bytes.

    ``out_dir`` must be empty, missing, or a folder previously written by this function (its
    class folders are then replaced).
    """
    from ..builders import build_mvtec_style

    out = os.path.abspath(os.fspath(out_dir))
    names = list(SYNTHETIC_CLASSES) if classes is None else ([classes] if isinstance(classes, str) else list(classes))
    counts = _check_arguments(names, n_train_good, n_test_good, n_test_defect, image_size, defects)
    _prepare_folder(out)
    for cls in names:
        _write_class(os.path.join(out, cls), cls, *counts, size=int(image_size), seed=seed, defects=defects)
    build_mvtec_style(out)
    return out


def _check_arguments(names: list[str], n_train_good, n_test_good, n_test_defect, image_size,
                     defects: Sequence[str] | None) -> tuple[int, int, int]:
    """Refuse a mistaken argument before anything is written; returns the three counts as ints."""
    if not names:
        raise S2SWError("generate_dataset: classes is empty — pass at least one class name.")
    for c in names:
        _family(c)
    if len(set(names)) != len(names):
        raise S2SWError("generate_dataset: classes contains duplicates — list each class once.")
    counts = (_check_count("n_train_good", n_train_good), _check_count("n_test_good", n_test_good),
              _check_count("n_test_defect", n_test_defect))
    if sum(counts) == 0:
        raise S2SWError("generate_dataset: all image counts are 0 — ask for at least one image.")
    if int(image_size) < 16:
        raise S2SWError(f"image_size must be at least 16, got {image_size!r} — use e.g. 256.")
    if defects is not None:
        bad = [d for d in defects if d not in DEFECT_TYPES]
        if bad:
            raise S2SWError(f"unknown defect type(s) {', '.join(bad)} — use: {', '.join(DEFECT_TYPES)}.")
    return counts


def _prepare_folder(out: str) -> None:
    """Create ``out`` (or empty the class folders of a previous run there) and mark it as ours."""
    if os.path.exists(out):
        if not os.path.isdir(out):
            raise S2SWError(f"output path exists and is not a folder: {out} — choose another out_dir.")
        if os.listdir(out) and not os.path.exists(os.path.join(out, _MARKER)):
            raise S2SWError(f"output folder {out} is not empty and was not made by generate_dataset — choose an empty out_dir.")
        for c in os.listdir(out):
            p = os.path.join(out, c)
            if os.path.isdir(p):
                shutil.rmtree(p)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, _MARKER), "w", encoding="utf-8") as fh:
        fh.write("written by s2swclip.data.synthetic.generate_dataset; class folders here are replaced on rerun\n")


def _write_class(cdir: str, cls: str, n_train_good: int, n_test_good: int, n_test_defect: int, *,
                 size: int, seed: int, defects: Sequence[str] | None) -> None:
    """One class's normal train and test images, and its defective test images with their masks
    (spread round-robin over the allowed defect types)."""
    kinds = [d for d in class_defects(cls) if defects is None or d in defects]
    if n_test_defect and not kinds:
        raise S2SWError(f"generate_dataset: no allowed defect type for class {cls!r} — widen defects=.")
    for split, n, code in (("train", n_train_good, 1), ("test", n_test_good, 2)):
        d = os.path.join(cdir, split, "good")
        os.makedirs(d, exist_ok=True)
        for i in range(n):
            img, _ = render_sample(cls, None, seed=_image_seed(seed, cls, code, i), image_size=size, class_seed=seed)
            _save_png(img, os.path.join(d, f"{i:03d}.png"))
    counters = {k: 0 for k in kinds}
    for i in range(n_test_defect):
        kind = kinds[i % len(kinds)]
        j = counters[kind]
        counters[kind] += 1
        idir = os.path.join(cdir, "test", kind)
        mdir = os.path.join(cdir, "ground_truth", kind)
        os.makedirs(idir, exist_ok=True)
        os.makedirs(mdir, exist_ok=True)
        img, mask = render_sample(cls, kind, seed=_image_seed(seed, cls, 3, i), image_size=size, class_seed=seed)
        _save_png(img, os.path.join(idir, f"{j:03d}.png"))
        _save_png(mask.astype(np.uint8) * 255, os.path.join(mdir, f"{j:03d}_mask.png"))


def _image_seed(seed: int, cls: str, code: int, i: int) -> int:
    s = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, _crc(cls), code, i]).generate_state(1)[0]
    return int(s)
