"""Input handling shared by every metric: conversion, validation, precision, chunked reading.

Every metric accepts NumPy arrays, torch tensors (any device; moved to the CPU a chunk at a time)
or sequences of per-image arrays. Image-level inputs are 1-D ``labels`` (0/1 or bool) and
``scores``. Pixel-level inputs are ``masks`` and ``maps`` shaped ``[N,H,W]`` (``[N,1,H,W]`` and a
single ``[H,W]`` image are accepted too). Masks are binarised at 0.5 (bool masks are used as they
are), the same rule the data pipeline applies.

Invalid inputs (shape mismatch, NaN/inf scores, non-binary labels, empty inputs) raise
:class:`s2swclip.errors.S2SWError`; inputs for which a metric has no value raise its subclass
:class:`UndefinedMetricError`.

Working precision: float64 maps stay float64; every other dtype (float32/16, bfloat16, small
integers, bool) is compared as float32, 32/64-bit integers as float64.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ...arrays import to_numpy, torch_tensor_type
from ...errors import S2SWError

__all__ = ["UndefinedMetricError"]

# Pixels per chunk for the passes that read masks and maps (labelling, selection, histograms).
_CHUNK_PIXELS = 1 << 20


class UndefinedMetricError(S2SWError):
    """The metric has no value for these inputs (for example only one class is present)."""


def _work_dtype(dtype: np.dtype) -> np.dtype:
    dtype = np.dtype(dtype)
    if dtype == np.float64:
        return np.dtype(np.float64)
    if dtype.kind in "iu" and dtype.itemsize >= 4:
        return np.dtype(np.float64)
    if dtype.kind in "biuf":
        return np.dtype(np.float32)
    raise S2SWError(f"scores/maps must be numeric, got dtype {dtype}")


class _Stack:
    """A [N,H,W] source (array, tensor or sequence of [H,W]) read one chunk of images at a time."""

    def __init__(self, x: Any, name: str):
        self.name = name
        tensor = torch_tensor_type()
        if isinstance(x, (list, tuple)):
            if len(x) == 0:
                raise S2SWError(f"{name} is empty")
            first = to_numpy(x[0])
            hw = first.shape[-2:] if first.ndim >= 2 else None
            if first.ndim not in (2, 3) or (first.ndim == 3 and first.shape[0] != 1):
                raise S2SWError(f"{name}: each element must be [H,W] or [1,H,W], got {first.shape}")
            self._seq = x
            self._arr = None
            self.shape = (len(x), int(hw[0]), int(hw[1]))
            self._src_dtype = first.dtype
            return
        self._seq = None
        if not (tensor is not None and isinstance(x, tensor)):
            x = np.asarray(x)
        shape = tuple(int(s) for s in x.shape)
        if len(shape) == 4 and shape[1] == 1:
            x = x[:, 0]
        elif len(shape) == 2:
            x = x[None]
        elif len(shape) != 3:
            raise S2SWError(f"{name} must be shaped [N,H,W] (or [N,1,H,W]), got {list(shape)}")
        self._arr = x
        self.shape = tuple(int(s) for s in x.shape)
        self._src_dtype = to_numpy(x[:1, :1, :1]).dtype if self.shape[0] > 0 else np.dtype(np.float32)

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def pixels(self) -> int:
        return self.shape[0] * self.shape[1] * self.shape[2]

    def _raw(self, i: int, j: int) -> np.ndarray:
        if self._seq is None:
            return to_numpy(self._arr[i:j])
        parts = []
        for k in range(i, j):
            a = to_numpy(self._seq[k])
            if a.shape[-2:] != self.shape[1:] or a.size != self.shape[1] * self.shape[2]:
                raise S2SWError(
                    f"{self.name}[{k}] has shape {list(a.shape)}, expected {list(self.shape[1:])}"
                )
            parts.append(a.reshape(self.shape[1:]))
        return np.stack(parts)

    def values(self, i: int, j: int, dtype: np.dtype) -> np.ndarray:
        return np.ascontiguousarray(self._raw(i, j), dtype=dtype)

    def binary(self, i: int, j: int) -> np.ndarray:
        a = self._raw(i, j)
        if a.dtype == np.bool_:
            return np.ascontiguousarray(a)
        if a.dtype.kind not in "iuf":
            raise S2SWError(f"{self.name} must be numeric or bool, got dtype {a.dtype}")
        if a.dtype.kind == "f" and np.isnan(a).any():
            raise S2SWError(f"{self.name} contains NaN")
        return a > 0.5

    @property
    def work_dtype(self) -> np.dtype:
        return _work_dtype(self._src_dtype)


def _pair(masks: Any, maps: Any) -> tuple[_Stack, _Stack]:
    if masks is None or maps is None:
        raise S2SWError("pixel metrics need both masks and maps")
    ms, xs = _Stack(masks, "masks"), _Stack(maps, "maps")
    if ms.shape != xs.shape:
        raise S2SWError(f"masks {list(ms.shape)} and maps {list(xs.shape)} must have the same shape")
    if len(xs) == 0 or xs.pixels == 0:
        raise S2SWError("masks/maps are empty")
    return ms, xs


def _chunks(stack: _Stack, max_pixels: int | None = None):
    """``(i, j)`` ranges of whole images with at most ``max_pixels`` pixels each (at least one
    image); the default is :data:`_CHUNK_PIXELS`."""
    if max_pixels is None:
        max_pixels = _CHUNK_PIXELS
    n, h, w = stack.shape
    step = max(1, max_pixels // max(1, h * w))
    for i in range(0, n, step):
        yield i, min(n, i + step)


def _check_finite(x: np.ndarray, name: str) -> None:
    if not np.isfinite(x).all():
        raise S2SWError(f"{name} contain NaN or infinite values; every score must be finite")


def _image_inputs(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    y = to_numpy(labels).reshape(-1)
    s = to_numpy(scores).reshape(-1)
    if y.shape != s.shape:
        raise S2SWError(f"labels ({y.size}) and scores ({s.size}) must have the same length")
    if y.size == 0:
        raise S2SWError("labels/scores are empty")
    if y.dtype != np.bool_:
        if y.dtype.kind not in "iuf" or not np.isin(y, (0, 1)).all():
            raise S2SWError("labels must be binary: 0 = normal, 1 = anomalous (or bool)")
        y = y == 1
    s = np.ascontiguousarray(s, dtype=_work_dtype(s.dtype))
    _check_finite(s, "scores")
    return y, s
