"""Image files: which ones we read, how they are decoded and turned into model input.

This module is THE list of readable image formats (:data:`IMAGE_EXTENSIONS`), used by the
prediction inputs, the dataset builders and the service alike. It imports NumPy and Pillow only
(no torch), so the torch-free runtime shares it.
"""

from __future__ import annotations

import os

from PIL import Image

__all__ = ["IMAGE_EXTENSIONS", "OPENAI_MEAN", "OPENAI_STD", "is_image_name"]

#: CLIP (OpenAI) normalisation constants, per RGB channel.
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

# Pillow formats that identify files but cannot decode them here: stubs that need an external
# handler (BUFR, GRIB, HDF5, WMF/EMF off Windows), MPEG (header only), EPS (needs Ghostscript),
# IPTC (metadata records).
_NOT_DECODABLE = frozenset({"BUFR", "GRIB", "HDF5", "WMF", "MPEG", "EPS", "IPTC"})


def _readable_extensions() -> tuple[str, ...]:
    Image.init()
    return tuple(sorted({ext.lower() for ext, fmt in Image.registered_extensions().items()
                         if fmt in Image.OPEN and fmt not in _NOT_DECODABLE}))


#: Lower-case file extensions (with the dot) of every format Pillow can decode here: PNG, JPEG,
#: BMP, TIFF, WebP, GIF (first frame), PPM/PGM, TGA, JPEG 2000, ... Decided once, used everywhere.
IMAGE_EXTENSIONS: tuple[str, ...] = _readable_extensions()


def is_image_name(name: str | os.PathLike) -> bool:
    """True when the file name has one of :data:`IMAGE_EXTENSIONS` (case-insensitive) and is
    not a hidden or resource-fork file (``.x``, ``._x``)."""
    base = os.path.basename(os.fspath(name))
    return not base.startswith(".") and os.path.splitext(base)[1].lower() in IMAGE_EXTENSIONS
