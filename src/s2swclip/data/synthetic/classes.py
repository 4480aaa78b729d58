"""The synthetic classes and their families, defect types, and the seeded generators every
render draws from."""

from __future__ import annotations

import zlib

import numpy as np

from ...errors import S2SWError

TEXTURE_FAMILIES = ("stripes", "weave", "marble", "dots")
OBJECT_FAMILIES = ("disc", "pill", "ring")
DEFECT_TYPES = ("scratch", "crack", "hole", "stain", "color_spot", "missing_part", "contamination")

#: default class name -> family
SYNTHETIC_CLASSES = {
    "wood": "stripes",
    "fabric": "weave",
    "marble": "marble",
    "perforated": "dots",
    "bottle_cap": "disc",
    "pill": "pill",
    "nut": "ring",
}

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _family(cls: str) -> str:
    if cls in SYNTHETIC_CLASSES:
        return SYNTHETIC_CLASSES[cls]
    if cls in TEXTURE_FAMILIES or cls in OBJECT_FAMILIES:
        return cls
    known = ", ".join(list(SYNTHETIC_CLASSES) + [f for f in TEXTURE_FAMILIES + OBJECT_FAMILIES if f not in SYNTHETIC_CLASSES])
    raise S2SWError(f"unknown synthetic class {cls!r} — use one of: {known}.")


def class_defects(cls: str) -> tuple[str, ...]:
    """Defect types generated for a class (``missing_part`` only for object classes)."""
    fam = _family(cls)
    if fam in OBJECT_FAMILIES:
        return DEFECT_TYPES
    return tuple(d for d in DEFECT_TYPES if d != "missing_part")


def _crc(s: str) -> int:
    return zlib.crc32(s.encode("utf-8")) & 0xFFFFFFFF


def _rng(*keys: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(k) & 0xFFFFFFFF for k in keys]))
