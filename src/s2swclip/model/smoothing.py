"""Gaussian smoothing of the final anomaly maps.

Implements the last step of the anomaly map, ``docs/method.md`` §6.4: the summed
layer maps are filtered per image with a Gaussian of standard deviation ``sigma``
(4 in the reference runs), using SciPy's semantics
(``scipy.ndimage.gaussian_filter(map, sigma, mode="reflect", truncate=4.0)``),
here in batched torch on any device.

Boundary: SciPy's ``"reflect"`` mode is the half-sample symmetric extension
``d c b a | a b c d | d c b a`` (PyWavelets calls it ``"symmetric"``). Torch's
``F.pad`` does not offer it (its ``"reflect"`` is the whole-sample
``d c b | a b c d``), so the padding is an index gather; the index map has
period ``2 n`` and is therefore also right when the image side ``n`` is smaller
than the kernel radius (repeated reflection, as SciPy does).

The 1-D correlations are computed as ``unfold(...) @ kernel`` rather than with
``conv1d``: on CPU it is several times faster for this single-channel case, and
on CUDA it stays in full float32 precision (cuDNN convolutions may use TF32 by
default, matmuls do not), so results match SciPy to float32 rounding on every
device. For export (:func:`.portable.portable`) the correlation is a ``conv1d`` of the
padded signal: the same sums in another order (exporters cannot convert ``unfold``, and
the runtimes' convolutions run in full precision on CPUs).
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .portable import portable, tracing

__all__ = ["gaussian_smooth", "gaussian_kernel1d", "reflect_indices"]


@lru_cache(maxsize=64)
def _cached_kernel(sigma: float, truncate: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    radius = int(truncate * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    phi = torch.exp(-0.5 / (sigma * sigma) * x * x)
    phi = phi / phi.sum()
    return phi.to(dtype=dtype, device=device)


def gaussian_kernel1d(
    sigma: float,
    truncate: float = 4.0,
    *,
    dtype: torch.dtype = torch.float32,
    device: Optional[torch.device | str] = None,
) -> Tensor:
    """Normalised 1-D Gaussian kernel, as ``scipy.ndimage.gaussian_filter1d`` builds it.

    ``radius = int(truncate * sigma + 0.5)``; taps ``exp(-x**2 / (2 sigma**2))`` for
    ``x = -radius..radius``, divided by their sum (computed in float64, then cast).

    The result is cached per ``(sigma, truncate, dtype, device)``; treat it as
    read-only.

    Args:
        sigma: standard deviation in pixels, > 0.
        truncate: kernel half-width in units of ``sigma``.
        dtype: dtype of the returned taps.
        device: device of the returned taps (default CPU).

    Returns:
        Tensor of shape ``[2 * radius + 1]``.
    """
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma!r}")
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if tracing():  # a kernel made while tracing is a tracer value: never cache it
        return _cached_kernel.__wrapped__(float(sigma), float(truncate), dtype, dev)
    return _cached_kernel(float(sigma), float(truncate), dtype, dev)


def reflect_indices(n: int, pad_left: int, pad_right: int, device=None) -> Tensor:
    """Gather indices for SciPy ``"reflect"`` (half-sample symmetric) padding.

    ``x.index_select(dim, reflect_indices(n, l, r))`` pads ``x`` (size ``n`` along
    ``dim``) by ``l`` samples on the left and ``r`` on the right with the extension
    ``... c b a | a b c ... | ... c b a``. The map has period ``2 n``, so any pad
    width is allowed, also wider than ``n``.

    Args:
        n: signal length along the padded axis, >= 1.
        pad_left: samples added before index 0.
        pad_right: samples added after index ``n - 1``.
        device: device of the returned index tensor.

    Returns:
        Long tensor of shape ``[pad_left + n + pad_right]`` with values in ``[0, n)``.
    """
    if n < 1:
        raise ValueError(f"cannot pad an empty axis (n={n})")
    idx = torch.arange(-pad_left, n + pad_right, device=device)
    m = torch.remainder(idx, 2 * n)
    return torch.where(m < n, m, 2 * n - 1 - m)


def _correlate_last(x: Tensor, kernel: Tensor) -> Tensor:
    """Correlate the last axis of ``x`` with ``kernel`` (odd length), reflect boundary."""
    k = kernel.numel()
    r = (k - 1) // 2
    n = x.shape[-1]
    idx = reflect_indices(n, r, r, device=x.device)
    xp = x.index_select(-1, idx)  # [..., n + 2r]
    if portable():
        out = F.conv1d(xp.reshape(-1, 1, n + 2 * r), kernel.reshape(1, 1, k))  # [M, 1, n]
        return out.reshape(x.shape)
    return xp.unfold(-1, k, 1) @ kernel  # [..., n, k] @ [k] -> [..., n]


def gaussian_smooth(maps: Tensor, sigma: Optional[float] = 4.0, truncate: float = 4.0) -> Tensor:
    """Per-image 2-D Gaussian filter, equal to SciPy's ``gaussian_filter(..., mode="reflect")``.

    Each ``[H, W]`` slice is filtered on its own (never across the batch): first
    along ``H`` then along ``W`` (SciPy's axis order), separable kernel from
    :func:`gaussian_kernel1d`. Works on the input's device and dtype
    (integer inputs are converted to float32); differentiable.

    Args:
        maps: Tensor of shape ``[B, H, W]`` (any number of leading axes, or none,
            is accepted; the filter always acts on the last two axes only).
        sigma: standard deviation in pixels. ``None`` or ``0`` means no smoothing
            and returns ``maps`` unchanged (SciPy also leaves the input as is).
        truncate: kernel half-width in units of ``sigma`` (SciPy's default 4.0).

    Returns:
        Tensor of shape ``[B, H, W]`` (same shape as ``maps``).

    Example:
        >>> maps = torch.rand(2, 518, 518)
        >>> gaussian_smooth(maps, sigma=4).shape
        torch.Size([2, 518, 518])
    """
    if sigma is None or sigma == 0:
        return maps
    if sigma < 0 or math.isnan(sigma):
        raise ValueError(f"sigma must be >= 0 or None, got {sigma!r}")
    if maps.dim() < 2:
        raise ValueError(f"expected maps of shape [..., H, W], got {tuple(maps.shape)}")
    if not maps.is_floating_point():
        maps = maps.to(torch.float32)
    kernel = gaussian_kernel1d(sigma, truncate, dtype=maps.dtype, device=maps.device)
    out = _correlate_last(maps.transpose(-1, -2), kernel).transpose(-1, -2)  # along H
    out = _correlate_last(out, kernel)  # along W
    return out.contiguous()
