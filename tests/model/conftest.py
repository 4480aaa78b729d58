"""Shared NumPy reference helpers for the model formula tests."""

import numpy as np
import pytest


def _bilinear_axis(x: np.ndarray, out: int, axis: int) -> np.ndarray:
    """Linear resize of one axis with half-pixel centres (align_corners=False), edge clamped."""
    n = x.shape[axis]
    i = np.arange(out, dtype=np.float64)
    src = (i + 0.5) * (n / out) - 0.5
    src = np.maximum(src, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), n - 1)
    i1 = np.minimum(i0 + 1, n - 1)
    lam = src - i0
    shape = [1] * x.ndim
    shape[axis] = out
    lam = lam.reshape(shape)
    return np.take(x, i0, axis=axis) * (1 - lam) + np.take(x, i1, axis=axis) * lam


def np_bilinear_resize(x: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Bilinear resize of the last two axes (PyTorch/OpenCV semantics, align_corners=False)."""
    y = _bilinear_axis(x.astype(np.float64), out_h, x.ndim - 2)
    return _bilinear_axis(y, out_w, x.ndim - 1)


@pytest.fixture
def np_bilinear():
    return np_bilinear_resize
