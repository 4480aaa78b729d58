"""Image files: which ones we read, how they are decoded and turned into model input.

This module is THE list of readable image formats (:data:`IMAGE_EXTENSIONS`) and the one
decoder used by prediction, the dataset reader, the service and the torch-free runtime. It
imports NumPy and Pillow only (no torch).

* :func:`open_image` decodes a file or bytes (first frame of animations and multi-page files),
  turning every failure into one :class:`ImageError` line with a machine-readable ``code``.
* :func:`to_rgb` converts any Pillow mode to 8-bit RGB (16-bit, float, palette, transparency).
* :func:`preprocess` is the model input: bicubic resize to S x S, ``/255``, OpenAI mean/std, as
  float32 ``[3, S, S]``; it equals torchvision's ``Resize((S, S), BICUBIC) -> CenterCrop(S) ->
  ToTensor() -> Normalize`` of the released code bit for bit (same float32 operations).
* :func:`decode_for_model` is what the inference pipeline uses: decode under a
  :class:`PixelBudget` (the decoded pixels held at once by all threads together are capped), then
  immediately reduce to the model input and a bounded preview, and drop the full resolution.
"""

from __future__ import annotations

import io
import os
import threading
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import S2SWError, first_line
from ..fileio import NotRegularFileError, open_regular

__all__ = [
    "IMAGE_EXTENSIONS",
    "OPENAI_MEAN",
    "OPENAI_STD",
    "DecodedImage",
    "ImageError",
    "model_input",
    "PixelBudget",
    "decode_for_model",
    "is_image_name",
    "open_image",
    "preprocess",
    "preview",
    "to_rgb",
]

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
#: Pillow formats tried when decoding (whatever a file's name): never one that hands the file to an
#: external program (EPS runs Ghostscript) or a stub.
_DECODABLE_FORMATS: tuple[str, ...] = tuple(sorted(f for f in Image.OPEN if f not in _NOT_DECODABLE))

_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I;16S", "I;16LS", "I;16BS"}


def is_image_name(name: str | os.PathLike) -> bool:
    """True when the file name has one of :data:`IMAGE_EXTENSIONS` (case-insensitive) and is
    not a hidden or resource-fork file (``.x``, ``._x``)."""
    base = os.path.basename(os.fspath(name))
    return not base.startswith(".") and os.path.splitext(base)[1].lower() in IMAGE_EXTENSIONS


class ImageError(S2SWError):
    """An image that cannot be used, with a short machine-readable reason.

    ``code`` is one of ``missing``, ``unreadable`` (permissions, a folder), ``not_a_regular_file``
    (a FIFO, socket or device: never opened for reading), ``empty``, ``not_an_image``,
    ``too_many_pixels``, ``corrupt``, ``unsupported_uri`` (a URI scheme that cannot be read, see
    :mod:`s2swclip.inference.uris`).
    """

    def __init__(self, code: str, message: str, *, fields: Iterable[str] = ()):
        super().__init__(message, fields=fields)
        self.code = code


# --------------------------------------------------------------------------------------------
# conversion
# --------------------------------------------------------------------------------------------
def _high_depth_to_uint8(arr: np.ndarray) -> np.ndarray:
    """Map an integer or float array with values beyond 8 bits to uint8 without clipping.

    Integer data with non-negative values is divided by the full range of the smallest usual
    bit depth (8, 10, 12, 14 or 16 bits, else the maximum) that holds its largest value, so a
    12-bit sensor image stays a 12-bit image rather than turning white (clipping) or black
    (dividing by 65535). Data with negative values (e.g. CT in Hounsfield units) is min-max
    stretched. Float data in [0, 1] is multiplied by 255; in [0, 255] it is kept as is.
    """
    a = np.asarray(arr)
    if a.size == 0:
        return a.astype(np.uint8)
    a = a.astype(np.float64)
    finite = np.isfinite(a)
    if not finite.all():
        a = np.where(finite, a, 0.0)
    lo, hi = float(a.min()), float(a.max())
    if np.issubdtype(np.asarray(arr).dtype, np.floating):
        if lo >= 0.0 and hi <= 1.0:
            return np.round(a * 255.0).astype(np.uint8)
        if lo >= 0.0 and hi <= 255.0:
            return np.round(a).astype(np.uint8)
    if lo < 0.0 or np.issubdtype(np.asarray(arr).dtype, np.floating):
        if hi <= lo:
            return np.zeros(a.shape, np.uint8)
        return np.round((a - lo) * (255.0 / (hi - lo))).astype(np.uint8)
    if hi <= 255.0:
        return a.astype(np.uint8)
    full = None
    for bits in (10, 12, 14, 16):
        if hi <= 2.0**bits - 1:
            full = 2.0**bits - 1
            break
    if full is None:
        full = hi
    return np.round(a * (255.0 / full)).astype(np.uint8)


def to_rgb(img: Image.Image, background: Sequence[int] = (0, 0, 0)) -> Image.Image:
    """Convert a PIL image of any mode to an 8-bit ``"RGB"`` image.

    * ``RGB`` is returned unchanged and ``L``/``1``/``CMYK``/``YCbCr``/... use PIL's own
      conversion (the released code's ``convert("RGB")``, so numbers match on ordinary data);
    * images with transparency (``RGBA``, ``LA``, ``PA``, palette with a transparent index) are
      alpha-composited over ``background`` (black by default, which equals dropping the alpha
      channel for the usual fully opaque or zeroed-transparent images);
    * 16-bit, 32-bit integer and float images are scaled to 8 bits (see
      :func:`_high_depth_to_uint8`) instead of being clipped to white.
    """
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in _SIXTEEN_BIT_MODES or mode in ("I", "F"):
        arr = np.asarray(img)
        if mode.startswith("I;16") and arr.dtype.kind == "u" and arr.dtype.itemsize == 1:
            arr = np.asarray(img, dtype=np.uint16)  # defensive: older Pillow views
        grey = _high_depth_to_uint8(arr)
        return Image.fromarray(np.ascontiguousarray(grey), mode="L").convert("RGB")
    if mode == "P" and "transparency" not in img.info:
        return img.convert("RGB")
    if mode in ("RGBA", "LA", "PA", "La", "RGBa", "P"):
        rgba = img.convert("RGBA")
        base = Image.new("RGBA", rgba.size, tuple(int(c) for c in background) + (255,))
        return Image.alpha_composite(base, rgba).convert("RGB")
    if mode in ("L", "1", "CMYK", "YCbCr", "LAB", "HSV"):
        return img.convert("RGB")
    try:
        return img.convert("RGB")
    except (ValueError, OSError):
        arr = np.asarray(img)
        if arr.ndim == 3:
            arr = arr[..., 0]
        grey = _high_depth_to_uint8(arr)
        return Image.fromarray(np.ascontiguousarray(grey), mode="L").convert("RGB")


# --------------------------------------------------------------------------------------------
# decoding
# --------------------------------------------------------------------------------------------
def _label(source) -> str:
    return "upload" if isinstance(source, (bytes, bytearray, memoryview)) else os.fspath(source)


def _open_lazy(source, what: str, prefix: str) -> Image.Image:
    """``Image.open`` (header only) with every failure turned into an :class:`ImageError`."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        if not len(source):
            raise ImageError("empty", f"{prefix}empty file")
        fp = io.BytesIO(bytes(source))
        where = ""
    else:
        path = os.fspath(source)
        where = f" {path}"
        if not os.path.lexists(path):
            raise ImageError("missing", f"{prefix}{what} file not found: {path}")
        if not os.path.exists(path):
            raise ImageError("missing", f"{prefix}{what} file is a broken symbolic link: {path}")
        if os.path.isdir(path):
            raise ImageError("unreadable", f"{prefix}{what} path is a folder, not an image file: {path}")
        try:
            fp = os.fdopen(open_regular(path), "rb")  # a FIFO, socket or device is never opened
            if os.fstat(fp.fileno()).st_size == 0:
                fp.close()
                raise ImageError("empty", f"{prefix}{what} file is empty: {path}")
        except NotRegularFileError as exc:
            raise ImageError("not_a_regular_file", f"{prefix}{what} path {path} is {exc.kind}, not a regular "
                                                   f"file; it was not read") from None
        except OSError as exc:
            raise ImageError("unreadable", f"{prefix}cannot open {what} file {path}: "
                                           f"{first_line(exc)}") from None
    try:
        return Image.open(fp, formats=_DECODABLE_FORMATS)
    except Image.DecompressionBombError as exc:
        fp.close()
        raise ImageError("too_many_pixels", f"{prefix}{what}{where} is too large to decode safely ({exc})") from None
    except (UnidentifiedImageError, ValueError, OSError, SyntaxError, EOFError):
        fp.close()
        raise ImageError("not_an_image", f"{prefix}{what}{where} is not an image Pillow can read "
                                         f"(PNG, JPEG, BMP, TIFF, WebP, GIF, ...)") from None


def _load(im: Image.Image, what: str, where: str, prefix: str) -> Image.Image:
    """Decode the first frame in place; errors become :class:`ImageError` ``corrupt``."""
    fmt = (im.format or "image").upper()
    try:
        im.load()
    except Image.DecompressionBombError as exc:
        raise ImageError("too_many_pixels", f"{prefix}{what}{where} is too large to decode safely ({exc})") from None
    except Exception as exc:  # noqa: BLE001 - any decoder failure means a corrupt file
        raise ImageError("corrupt", f"{prefix}cannot read {what}{where}: corrupt or truncated "
                                    f"{fmt} file ({first_line(exc)})") from None
    if im.width < 1 or im.height < 1:
        raise ImageError("corrupt", f"{prefix}{what}{where} has no pixels ({im.width}x{im.height})")
    return im


def open_image(source: str | os.PathLike | bytes, *, what: str = "image", context: str = "",
               max_pixels: int | None = None) -> Image.Image:
    """Decode an image file (or the bytes of one): the first frame, in its own Pillow mode.

    Args:
        source: a path, or the file's bytes (uploads).
        what: the word used in messages (``image``, ``mask``).
        context: prefixed to messages (the dataset reader passes its meta.json item).
        max_pixels: refuse images with more pixels (checked from the header, before decoding).

    Raises:
        ImageError: one line naming the file, with a ``code`` (see :class:`ImageError`).
    """
    prefix = f"{context}: " if context else ""
    im = _open_lazy(source, what, prefix)
    where = "" if isinstance(source, (bytes, bytearray, memoryview)) else f" {os.fspath(source)}"
    try:
        if max_pixels is not None and im.width * im.height > max_pixels:
            raise ImageError("too_many_pixels", f"{prefix}{what}{where} is {im.width}x{im.height} = "
                                                f"{im.width * im.height:,} pixels, more than the limit "
                                                f"of {max_pixels:,}; downscale it first")
        _load(im, what, where, prefix)
    except BaseException:
        im.close()
        raise
    fp = getattr(im, "fp", None)
    if fp is not None and hasattr(im, "_exclusive_fp"):  # decoded: the file is no longer needed
        try:
            fp.close()
        except Exception:  # noqa: BLE001
            pass
    return im


def exif_upright(img: Image.Image) -> Image.Image:
    """Apply the EXIF orientation tag (phone photos) in place; a broken EXIF block is ignored."""
    try:
        ImageOps.exif_transpose(img, in_place=True)
    except Exception:  # noqa: BLE001 - a broken EXIF block must not make a readable image unreadable
        pass
    return img


# --------------------------------------------------------------------------------------------
# model input
# --------------------------------------------------------------------------------------------
_MEAN32 = np.asarray(OPENAI_MEAN, dtype=np.float32).reshape(3, 1, 1)
_STD32 = np.asarray(OPENAI_STD, dtype=np.float32).reshape(3, 1, 1)


def check_image_size(image_size) -> int:
    """``image_size`` as a positive int, or :class:`S2SWError`."""
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or int(image_size) < 1:
        raise S2SWError(f"image_size must be a positive integer, got {image_size!r} — pass e.g. 518.")
    return int(image_size)


def preprocess(img: Image.Image, image_size: int) -> np.ndarray:
    """Model input of a PIL image: float32 ``[3, S, S]``, CLIP-normalised.

    Any mode is accepted (converted with :func:`to_rgb`); then ``resize((S, S), BICUBIC)``,
    ``/ 255`` and ``(x - mean) / std`` in float32 — the same operations, in the same precision,
    as torchvision's ``Resize -> CenterCrop -> ToTensor -> Normalize``, so the numbers are equal.
    """
    size = check_image_size(image_size)
    if not isinstance(img, Image.Image):
        raise S2SWError(f"preprocess expects a PIL image, got {type(img).__name__} — "
                        f"load it with open_image(path).")
    rgb = to_rgb(img)
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.BICUBIC)
    x = np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1).astype(np.float32)
    x /= np.float32(255.0)
    x -= _MEAN32
    x /= _STD32
    return x


def preview(img: Image.Image, side: int) -> Image.Image:
    """RGB copy whose longest side is ``side`` pixels (aspect ratio kept), for overlays.

    Bicubic, after a fast box reduction of images over twice the size (Pillow's
    ``reducing_gap=2``, "indistinguishable from fair resampling in most cases" in its docs): a
    picture for people, not model input, so speed matters more than the last bit (640x480 to
    112 px: 0.6 ms instead of 1.4).
    """
    w0, h0 = img.size
    scale = side / max(w0, h0)
    w, h = max(1, round(w0 * scale)), max(1, round(h0 * scale))
    return to_rgb(img).resize((w, h), Image.BICUBIC, reducing_gap=2.0)


class PixelBudget:
    """A cap on the decoded pixels held at once by all threads together (bounded memory).

    ``with budget.hold(n):`` blocks until ``n`` more pixels fit under ``max_pixels``. A single
    image larger than the cap waits until nothing else is held and then runs alone, so every
    image gets decoded eventually; the caller refuses images over its own per-image limit first.
    """

    def __init__(self, max_pixels: int):
        if int(max_pixels) < 1:
            raise ValueError(f"max_pixels must be >= 1, got {max_pixels}")
        self.max_pixels = int(max_pixels)
        self.in_use = 0
        self.peak = 0
        self._cond = threading.Condition()

    def hold(self, pixels: int):
        return _Hold(self, min(int(pixels), self.max_pixels))


class _Hold:
    def __init__(self, budget: PixelBudget, n: int):
        self.budget, self.n = budget, n

    def __enter__(self):
        b = self.budget
        with b._cond:
            while b.in_use + self.n > b.max_pixels:
                b._cond.wait()
            b.in_use += self.n
            b.peak = max(b.peak, b.in_use)
        return self

    def __exit__(self, *exc):
        b = self.budget
        with b._cond:
            b.in_use -= self.n
            b._cond.notify_all()


@dataclass
class DecodedImage:
    """An image reduced right after decoding.

    Attributes:
        pixels: float32 [3, S, S] model input (see :func:`preprocess`).
        preview: RGB PIL image, longest side ``preview_side`` (for overlays).
        width, height: the original size (after the EXIF orientation is applied).
        format: Pillow's format name, lower case (``png``, ``jpeg``, ...).
    """

    pixels: np.ndarray
    preview: Image.Image
    width: int
    height: int
    format: str


def decode_for_model(source: str | os.PathLike | bytes, image_size: int, *,
                     preview_side: int | None = None, max_pixels: int | None = None,
                     budget: PixelBudget | None = None) -> DecodedImage:
    """Decode, apply the EXIF orientation, reduce to the model input and a preview, and let the
    full-resolution pixels go before returning.

    Args:
        source: a path or the file's bytes.
        image_size: S, the model input side.
        preview_side: longest side of the preview (default S).
        max_pixels: refuse larger images (from the header, before decoding).
        budget: decoded pixels in flight across threads; decoding waits for room.

    Raises:
        ImageError: one line naming the file and the reason, with a ``code``.
    """
    size = check_image_size(image_size)
    im = _open_lazy(source, "image", "")
    where = "" if isinstance(source, (bytes, bytearray, memoryview)) else f" {os.fspath(source)}"
    try:
        n = im.width * im.height
        if max_pixels is not None and n > max_pixels:
            raise ImageError("too_many_pixels", f"image{where} is {im.width}x{im.height} = {n:,} pixels, "
                                                f"more than the limit max_pixels {max_pixels:,}; downscale it first",
                                                fields=["max_pixels"])
        with (budget.hold(n) if budget is not None else _NO_HOLD):
            _load(im, "image", where, "")
            fmt = (im.format or "").lower()
            exif_upright(im)
            try:
                pixels = preprocess(im, size)
                small = preview(im, preview_side or size)
            except ImageError:
                raise
            except Exception as exc:  # noqa: BLE001 - an odd mode Pillow cannot convert
                raise ImageError("corrupt", f"cannot convert image{where} to RGB ({exc})") from None
            width, height = im.size
    finally:
        im.close()
    return DecodedImage(pixels, small, width, height, fmt)


def model_input(image: Image.Image | str | os.PathLike | bytes, image_size: int, *,
                max_pixels: int | None = None) -> np.ndarray:
    """The model input of one image, float32 ``[3, S, S]``, exactly as ``predict``, ``serve`` and
    the references make it (:func:`decode_for_model`: first frame, EXIF orientation applied, RGB,
    bicubic to S x S, CLIP normalisation). ``image``: a path, the file's bytes, or a PIL image
    (its EXIF orientation is applied to a copy).

    Raises:
        ImageError: one line naming the file and the reason.
    """
    if isinstance(image, Image.Image):
        im = image.copy()
        im.info = dict(image.info)
        exif_upright(im)
        return preprocess(im, image_size)
    return decode_for_model(image, image_size, preview_side=1, max_pixels=max_pixels).pixels


class _NoHold:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


_NO_HOLD = _NoHold()
