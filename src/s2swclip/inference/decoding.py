"""The decoding stage of the pipeline: a file, a URI or uploaded bytes -> the model input and a
preview (:class:`~s2swclip.inference.records.ScoredImage`), or the reason it cannot be scored.

Memory is bounded here: each image is reduced to the model input and a small preview right after
decoding (:func:`~s2swclip.data.images.decode_for_model`), and the decoded full-resolution pixels
held at once by all threads are capped by a :class:`~s2swclip.data.images.PixelBudget`.
"""

from __future__ import annotations

import hashlib
import os
import time

from ..data.images import ImageError, PixelBudget, decode_for_model
from ..errors import first_line
from ..fileio import NotRegularFileError, read_regular_file
from ..specs import DEFAULT_MAX_INFLIGHT_PIXELS, DEFAULT_MAX_PIXELS
from .records import ScoredImage
from .uris import MAX_REMOTE_BYTES, is_uri, read_uri_bytes, store_of

__all__ = ["Decoder", "read_file_bytes"]


class Decoder:
    """The decoding stage alone (no model needed): file -> model input + preview, or the reason
    it cannot be scored. :class:`~s2swclip.inference.pipeline.InferencePipeline` decodes with one;
    the Ray engine's CPU tasks run one each.

    Args:
        image_size: S, the model input side.
        max_pixels: refuse images with more pixels (from the header, before decoding).
        max_inflight_pixels: decoded full-resolution pixels held at once by all threads.
        preview_side: longest side of the overlay previews (default: the model size).
        max_remote_bytes: largest file read from a URI (see :mod:`.uris`).

    ``refused_stores`` maps a store (``scheme://authority``, :func:`~.uris.store_of`) to the
    ``(error_code, reason)`` of every URI in it: such URIs are not read (the engines fill it
    with :func:`~.uris.unreachable_stores`, once per run).
    """

    def __init__(self, image_size: int, *, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                 max_inflight_pixels: int = DEFAULT_MAX_INFLIGHT_PIXELS, preview_side: int | None = None,
                 max_remote_bytes: int = MAX_REMOTE_BYTES):
        self.image_size = int(image_size)
        self.max_pixels = max_pixels
        self.budget = PixelBudget(max_inflight_pixels)
        self.preview_side = int(preview_side or self.image_size)
        self.max_remote_bytes = int(max_remote_bytes)
        self.refused_stores: dict[str, tuple[str, str]] = {}

    def decode(self, source: str | os.PathLike | bytes, *, index: int = 0, name: str | None = None,
               label: str | None = None, digest: bool = False) -> ScoredImage:
        """Decode one file (a path, a URI or the file's bytes) into a record holding the model
        input and the preview, or the reason it cannot be scored. Thread-safe; memory bounded by
        the budget. ``digest``: read a local file whole (at most ``max_remote_bytes``), record
        the SHA-256 of exactly the bytes decoded in ``sha256``."""
        shown = label if label is not None else (os.fspath(source) if not isinstance(source, (bytes, bytearray)) else "upload")
        rec = ScoredImage(index, shown, name if name is not None else shown)
        t = time.perf_counter()
        try:
            if is_uri(source) or (digest and not isinstance(source, (bytes, bytearray))):
                refused = self.refused_stores.get(store_of(source)) if is_uri(source) else None
                if refused is not None:
                    raise ImageError(refused[0], f"{source}: {refused[1]}")
                try:
                    data = (read_uri_bytes(source, self.max_remote_bytes) if is_uri(source)
                            else read_file_bytes(source, self.max_remote_bytes))
                    if digest:
                        rec.sha256 = hashlib.sha256(data).hexdigest()
                    d = decode_for_model(data, self.image_size, preview_side=self.preview_side,
                                         max_pixels=self.max_pixels, budget=self.budget)
                except ImageError as e:  # messages about bytes do not name the file
                    where = os.fspath(source)
                    raise ImageError(e.code, str(e) if where in str(e) else f"{where}: {e}") from None
            else:
                if digest:
                    rec.sha256 = hashlib.sha256(source).hexdigest()
                d = decode_for_model(source, self.image_size, preview_side=self.preview_side,
                                     max_pixels=self.max_pixels, budget=self.budget)
        except ImageError as e:
            rec.error, rec.error_code = str(e), e.code
        else:
            rec.pixels, rec.preview = d.pixels, d.preview
            rec.width, rec.height, rec.format = d.width, d.height, d.format
        rec.timings_ms["decode"] = (time.perf_counter() - t) * 1000
        return rec


def read_file_bytes(path: str | os.PathLike, max_bytes: int) -> bytes:
    """A local file's bytes, at most ``max_bytes`` (more is an ``ImageError``, code
    ``too_many_pixels``: a file that large is refused before it is read whole)."""
    where = os.fspath(path)
    try:
        data = read_regular_file(path, max_bytes)
    except FileNotFoundError:
        raise ImageError("missing", f"{where}: no such file") from None
    except NotRegularFileError as e:  # a FIFO would block the worker for ever
        raise ImageError("unreadable", f"{where} is {e.kind}, not an image file") from None
    except OSError as e:
        raise ImageError("unreadable", f"cannot read {where}: {first_line(e)}") from None
    if len(data) > max_bytes:
        raise ImageError("too_many_pixels", f"{where} is larger than {max_bytes:,} bytes; downscale it first")
    return data
