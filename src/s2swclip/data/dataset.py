"""Reader for ``meta.json`` dataset descriptions and the image/mask preprocessing.

The ``meta.json`` format (shared with AnomalyCLIP, AdaCLIP and APRIL-GAN)::

    {"train": {cls: [item, ...]}, "test": {cls: [item, ...]}}
    item = {"img_path": "bottle/test/broken_large/000.png",        # relative to the root
            "mask_path": "bottle/ground_truth/broken_large/000_mask.png",  # "" for none
            "cls_name": "bottle", "specie_name": "broken_large", "anomaly": 1}

Preprocessing follows the released S2SWCLIP code so that numbers match:

* image: ``PIL.Image.open(...).convert("RGB")`` -> ``Resize((S, S), BICUBIC)`` ->
  ``CenterCrop(S)`` -> ``ToTensor()`` -> ``Normalize(OPENAI_MEAN, OPENAI_STD)``;
* mask: ``np.array(mask.convert("L")) > 0`` as a 0/255 ``"L"`` image -> ``Resize((S, S))``
  (bilinear) -> ``CenterCrop(S)`` -> ``ToTensor()`` -> ``> 0.5``.

:func:`load_image` adds robust conversions for inputs the released code never saw (16-bit,
palette, transparency, float images) so that arbitrary user images can be scored.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from typing import Iterable

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms

from ..errors import S2SWError, first_line
from .images import (_SIXTEEN_BIT_MODES, OPENAI_MEAN, OPENAI_STD, check_image_size, exif_upright, open_image,
                     preprocess, to_rgb)

__all__ = [
    "OPENAI_MEAN",
    "OPENAI_STD",
    "AnomalyDataset",
    "load_image",
    "load_mask",
    "preprocess_image",
    "preprocess_mask",
    "to_rgb",
    "read_meta",
]

def load_image(path: str | os.PathLike | bytes, *, exif_transpose: bool = False, context: str = "") -> Image.Image:
    """Read an image file (a path, or the file's bytes) and return it as an 8-bit PIL ``"RGB"`` image.

    Grey, palette, transparent, 16-bit and float images are converted as described in
    :func:`~s2swclip.data.images.to_rgb`. With ``exif_transpose=True`` the EXIF orientation tag
    (phone photos) is applied; the dataset reader leaves it off, like the released code.
    ``context`` is prefixed to error messages (the dataset reader passes the meta.json item).

    Raises :class:`~s2swclip.data.images.ImageError` (an S2SWError) with one line naming the
    file when it is missing or unreadable.
    """
    img = open_image(path, context=context)
    if exif_transpose:
        exif_upright(img)
    return to_rgb(img)


def load_mask(path: str | os.PathLike, *, context: str = "") -> np.ndarray:
    """Read a mask file and return a boolean array, True where the pixel value is non-zero.

    Follows the released code: the file is converted to ``"L"`` and thresholded at > 0, so
    0/255 masks, 0/1 masks and VisA's class-index masks all work. Raises :class:`S2SWError`
    naming the file when it is missing or unreadable.
    """
    img = open_image(path, what="mask", context=context)
    if img.mode in _SIXTEEN_BIT_MODES or img.mode in ("I", "F"):
        arr = np.asarray(img)
        if arr.ndim == 3:
            arr = arr[..., 0]
        return np.asarray(arr != 0)
    return np.asarray(img.convert("L")) > 0


@lru_cache(maxsize=16)
def _mask_transform(image_size: int) -> transforms.Compose:
    return transforms.Compose(
        [
            transforms.Resize((image_size, image_size)),
            transforms.CenterCrop(image_size),
            transforms.ToTensor(),
        ]
    )


def preprocess_image(pil_image: Image.Image, image_size: int) -> torch.Tensor:
    """Turn a PIL image into the model input: float32 tensor ``[3, S, S]``, CLIP-normalised.

    The torch view of :func:`s2swclip.data.images.preprocess` (bicubic resize to S x S, ToTensor,
    OpenAI mean/std; equal to the released code's torchvision transform).
    """
    return torch.from_numpy(preprocess(pil_image, image_size))


def preprocess_mask(mask: np.ndarray, image_size: int) -> torch.Tensor:
    """Resize a boolean mask to the model resolution: float32 tensor ``[S, S]`` in {0, 1}.

    0/255 ``"L"`` image -> bilinear Resize((S, S)) -> CenterCrop(S) -> ToTensor -> > 0.5, as in
    the released code.
    """
    size = check_image_size(image_size)
    m = Image.fromarray((np.asarray(mask) > 0).astype(np.uint8) * 255, mode="L")
    t = _mask_transform(size)(m)[0]
    return (t > 0.5).to(torch.float32)


# --------------------------------------------------------------------------------------------
# meta.json
# --------------------------------------------------------------------------------------------
def read_meta(meta_path: str | os.PathLike) -> dict:
    """Load and validate a ``meta.json`` file; returns ``{split: {cls: [item, ...]}}``.

    Split keys are returned lower-cased (AnomalyCLIP's DAGM file uses ``"Train"``/``"Test"``).
    Raises :class:`S2SWError` naming the file when it is missing, not JSON, or not in the
    expected shape.
    """
    path = os.fspath(meta_path)
    fix = "build it with s2swclip.data.build_meta(<dataset>, <root>) or fix the file"
    if not os.path.isfile(path):
        raise S2SWError(f"meta.json not found: {path} — {fix}.")
    try:
        with open(path, "r", encoding="utf-8") as fh:
            data = json.load(fh)
    except json.JSONDecodeError as exc:
        raise S2SWError(f"meta.json is not valid JSON: {path} (line {exc.lineno}: {exc.msg}) — {fix}.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise S2SWError(f"cannot read meta.json {path} ({first_line(exc)}) — {fix}.") from None
    if not isinstance(data, dict) or not data:
        raise S2SWError(f'meta.json {path} must be an object {{"train": {{class: [items]}}, "test": {{...}}}} — {fix}.')
    out: dict = {}
    for split, classes in data.items():
        if not isinstance(classes, dict):
            raise S2SWError(f'meta.json {path}: split "{split}" must map class names to item lists — {fix}.')
        for cls, items in classes.items():
            if not isinstance(items, list):
                raise S2SWError(f'meta.json {path}: {split}/{cls} must be a list of items — {fix}.')
        out.setdefault(str(split).lower(), {}).update(classes)
    return out


def _item_label(item, where: str) -> int:
    val = item.get("anomaly", None)
    if isinstance(val, bool):
        return int(val)
    if isinstance(val, (int, np.integer)) and int(val) in (0, 1):
        return int(val)
    if isinstance(val, float) and val in (0.0, 1.0):
        return int(val)
    if isinstance(val, str) and val.strip() in ("0", "1"):
        return int(val.strip())
    raise S2SWError(f'{where}: "anomaly" must be 0 or 1, got {val!r} — fix this item in meta.json.')


class AnomalyDataset(Dataset):
    """A ``torch.utils.data.Dataset`` over one split of a ``meta.json`` dataset description.

    Args:
        root: dataset root; ``img_path``/``mask_path`` in the meta file are relative to it
            (absolute paths are used as they are).
        split: ``"test"`` (default) or ``"train"``.
        image_size: side S of the square model input.
        classes: optional subset (and order) of class names; default: all, in file order.
        meta_path: the description file; default ``<root>/meta.json``.

    Attributes:
        classes: ordered list of class names.
        items: list of item dicts (validated copies of the meta entries, class by class), with
            ``"cls_name"`` always set and ``"anomaly"`` an int.

    Each sample is a dict::

        {"image": float32 [3, S, S] CLIP-normalised, "mask": float32 [S, S] in {0, 1},
         "label": int (0 normal / 1 anomalous), "has_mask": bool, "cls_name": str,
         "path": str (absolute image path)}

    ``has_mask`` is False for an anomalous item without a mask (``mask_path`` empty or a
    directory): its mask is all zero and it should only count for image-level metrics. Normal
    items have an all-zero mask and ``has_mask`` True.

    ``deterministic`` declares that a sample is a pure function of its files' content and
    :attr:`preprocessing`: the training feature cache (:mod:`s2swclip.training.feature_cache`) relies on it
    and refuses a dataset that does not declare it. A subclass that adds a random augmentation
    must set it to False.
    """

    #: a sample depends only on its files' content and :attr:`preprocessing` (no randomness)
    deterministic: bool = True

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "test",
        image_size: int = 518,
        classes: Iterable[str] | None = None,
        meta_path: str | os.PathLike | None = None,
    ):
        self.root = os.path.abspath(os.fspath(root))
        if not os.path.isdir(self.root):
            raise S2SWError(f"dataset root is not a directory: {self.root} — pass the folder that holds meta.json.")
        self.image_size = check_image_size(image_size)
        self.meta_path = os.path.abspath(os.fspath(meta_path)) if meta_path else os.path.join(self.root, "meta.json")
        meta = read_meta(self.meta_path)
        self.split = str(split).lower()
        if self.split not in meta:
            have = ", ".join(sorted(meta)) or "none"
            raise S2SWError(f'meta.json {self.meta_path} has no "{split}" split (has: {have}) — choose one of those splits.')
        by_class = meta[self.split]
        if classes is None:
            names = list(by_class)
        else:
            names = [classes] if isinstance(classes, str) else [str(c) for c in classes]
            missing = [c for c in names if c not in by_class]
            if missing:
                have = ", ".join(by_class) or "none"
                raise S2SWError(
                    f"meta.json {self.meta_path}: class(es) {', '.join(missing)} not in the {self.split} split "
                    f"(available: {have}) — pick from those."
                )
        self.classes: list[str] = list(dict.fromkeys(names))
        self.items: list[dict] = []
        self._class_indices: dict[str, list[int]] = {}
        for cls in self.classes:
            idx = []
            for k, raw in enumerate(by_class[cls]):
                where = f"meta.json {self.meta_path} item {self.split}/{cls}[{k}]"
                if not isinstance(raw, dict) or not isinstance(raw.get("img_path"), str) or not raw["img_path"]:
                    raise S2SWError(f'{where}: each item needs a non-empty "img_path" string — fix or rebuild meta.json.')
                item = dict(raw)
                item["anomaly"] = _item_label(raw, where)
                mp = raw.get("mask_path") or ""
                if not isinstance(mp, str):
                    raise S2SWError(f'{where}: "mask_path" must be a string ("" for none) — fix or rebuild meta.json.')
                item["mask_path"] = mp
                item["cls_name"] = str(raw.get("cls_name") or cls)
                item.setdefault("specie_name", "")
                idx.append(len(self.items))
                self.items.append(item)
            self._class_indices[cls] = idx

    # -- helpers -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.items)

    def class_indices(self) -> dict[str, list[int]]:
        """Return ``{class name: [dataset indices]}`` in class order (a fresh copy)."""
        return {c: list(v) for c, v in self._class_indices.items()}

    def indices_of(self, cls_name: str) -> list[int]:
        """Return the dataset indices of one class; S2SWError when the class is not loaded."""
        if cls_name not in self._class_indices:
            raise S2SWError(f"class {cls_name!r} is not in this dataset (classes: {', '.join(self.classes)}) — pick one of those.")
        return list(self._class_indices[cls_name])

    @property
    def labels(self) -> list[int]:
        """Image labels (0/1) of all items, in dataset order."""
        return [it["anomaly"] for it in self.items]

    def _describe(self, item: dict) -> str:
        return f"meta.json item {self.split}/{item['cls_name']} img_path={item['img_path']!r}"

    def resolve(self, rel: str) -> str:
        """Absolute path of a meta.json path: ``root/rel``, or ``rel`` when absolute.

        Meta files written by the authors' scripts for some datasets prefix paths with the
        folder they were run from (``../brainMRI/yes/Y1.jpg``); when ``root/rel`` does not
        exist, leading components of ``rel`` are dropped one at a time until a file is found.
        """
        if os.path.isabs(rel):
            return os.path.normpath(rel)
        direct = os.path.normpath(os.path.join(self.root, rel))
        if os.path.exists(direct):
            return direct
        parts = [p for p in rel.replace("\\", "/").split("/") if p not in ("", ".")]
        for k in range(1, len(parts)):
            cand = os.path.join(self.root, *parts[k:])
            if os.path.exists(cand):
                return cand
        return direct

    @property
    def preprocessing(self) -> dict:
        """What turns an image file into the model input, as a JSON-safe description (the
        feature cache keys its entries by it, with the file's content)."""
        import PIL

        return {"image_size": self.image_size, "resize": "bicubic", "mean": list(OPENAI_MEAN),
                "std": list(OPENAI_STD), "decode": "first frame, to_rgb, no EXIF orientation",
                "pillow": PIL.__version__, "version": 1}

    def __getitem__(self, index: int) -> dict:
        return self.sample(index)

    def sample(self, index: int, *, image: bool | bytes = True) -> dict:
        """The sample ``index`` (see the class docstring).

        ``image``: True reads the image file; bytes decodes these (the file's content, read by
        the caller, e.g. to hash exactly what is decoded); False leaves ``"image"`` out (its
        features come from elsewhere).
        """
        if index < 0:
            index += len(self.items)
        item = self.items[index]
        desc = self._describe(item)
        path = self.resolve(item["img_path"])
        sample = {}
        if image is not False:
            img = load_image(path if image is True else image, context=desc)
            sample["image"] = torch.from_numpy(preprocess(img, self.image_size))
        S = self.image_size
        label = item["anomaly"]
        has_mask = True
        mask = torch.zeros((S, S), dtype=torch.float32)
        if label == 1:
            mp = item["mask_path"]
            mpath = self.resolve(mp) if mp else ""
            if not mp or os.path.isdir(mpath):
                has_mask = False
            else:
                mask = preprocess_mask(load_mask(mpath, context=desc), S)
        return {
            **sample,
            "mask": mask,
            "label": int(label),
            "has_mask": bool(has_mask),
            "cls_name": item["cls_name"],
            "path": path,
        }

    def __repr__(self) -> str:
        return (
            f"AnomalyDataset(root={self.root!r}, split={self.split!r}, image_size={self.image_size}, "
            f"classes={len(self.classes)}, items={len(self.items)})"
        )
