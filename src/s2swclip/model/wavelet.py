"""Spatial-to-wavelet transform of patch features.

Implements the wavelet branch, ``docs/method.md`` §6.2: each image's ``N x C``
feature matrix (token rows, class token at row 0; channel columns) is treated as a
2-D signal and passed through

(i)  a one-level stationary 2-D wavelet transform with ``sym2`` (PyWavelets'
     ``pywt.swt2(img, "sym2", level=1)``, periodic extension), and
(ii) a one-level 2-D DWT with ``haar`` (``pywt.dwt2(img, "haar",
     mode="symmetric")``), whose mixed bands are resized back bilinearly.

Both transforms are written in batched torch (no NumPy round trip) and follow
PyWavelets' conventions exactly, so that results agree with PyWavelets to float
rounding:

* Filters: ``dec_lo`` / ``dec_hi`` of ``pywt.Wavelet(name)`` (hard-coded below for
  ``haar`` and ``sym2``; other names are looked up in PyWavelets).
* DWT (any length ``n``, filter length ``L``): ``out[k] = sum_j f[j] * x~[2k + 1 - j]``
  for ``k = 0 .. floor((n + L - 1) / 2) - 1``, where ``x~`` is ``x`` extended by the
  mode (``symmetric`` = half-sample ``c b a | a b c``); for Haar that is
  ``ceil(n / 2)`` outputs and ``A = (x[2k] + x[2k+1]) / sqrt 2``,
  ``D = (x[2k] - x[2k+1]) / sqrt 2``.
* SWT level 1: ``out[k] = sum_j f[j] * x[(k + L/2 - j) mod n]`` (``n`` outputs).
* 2-D bands: rows (axis -2) are filtered first, then columns (axis -1);
  ``A`` = lo/lo, ``H`` = hi along rows & lo along columns, ``V`` = lo along rows &
  hi along columns, ``D`` = hi/hi — PyWavelets' ``(cA, (cH, cV, cD))``.

Odd sizes: ``pywt.swt2`` refuses odd lengths. :func:`spatial_to_wavelet` pads an
odd axis by ONE edge-replicated row/column (the last token row / last channel
repeated) before the stationary transform and crops the result back, so odd
token counts (e.g. ``N = 24*24 + 1 = 577`` at 336 px) work; even sizes are
untouched and equal PyWavelets. The Haar DWT handles odd sizes natively, exactly
as PyWavelets does (``docs/method.md`` §10.9).

The filtering is ``unfold(...) @ taps`` (full-precision matmul on every device;
cuDNN convolutions may silently use TF32 on GPUs); for export (:mod:`.portable`) the
same windows are gathered in one ``index_select`` through the extension map and multiplied
by both filters at once (an ``[L, 2]`` matrix: ONNX Runtime is slow on products by a vector).
All operations are differentiable.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor

from .portable import gather_windows, portable, tracing, window_index

__all__ = ["swt2_level1", "dwt2", "dwt2_haar", "spatial_to_wavelet", "DWT_MODES"]

# Decomposition filters exactly as PyWavelets 1.8 defines them
# (pywt.Wavelet(name).dec_lo, pywt.Wavelet(name).dec_hi).
_DEC_FILTERS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "haar": (
        (0.7071067811865476, 0.7071067811865476),
        (-0.7071067811865476, 0.7071067811865476),
    ),
    "sym2": (
        (-0.12940952255092145, 0.22414386804185735, 0.836516303737469, 0.48296291314469025),
        (-0.48296291314469025, 0.836516303737469, -0.22414386804185735, -0.12940952255092145),
    ),
}

#: Signal extension modes supported by :func:`dwt2` (PyWavelets names).
DWT_MODES = ("symmetric", "periodic", "reflect", "constant", "zero")


def _dec_filters(wavelet: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if wavelet in _DEC_FILTERS:
        return _DEC_FILTERS[wavelet]
    import pywt  # only to read the filter taps of other wavelets (constants, no data)

    w = pywt.Wavelet(wavelet)
    return tuple(w.dec_lo), tuple(w.dec_hi)


@lru_cache(maxsize=32)
def _taps(wavelet: str, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
    """Reversed (correlation-order) lo/hi decomposition taps, each ``[L]``."""
    lo, hi = _dec_filters(wavelet)
    lo_t = torch.tensor(lo[::-1], dtype=torch.float64).to(dtype=dtype, device=device)
    hi_t = torch.tensor(hi[::-1], dtype=torch.float64).to(dtype=dtype, device=device)
    return lo_t, hi_t


def _extension_index(n: int, left: int, right: int, mode: str, device) -> tuple[Tensor, Tensor | None]:
    """Indices into ``[0, n)`` for extending a length-``n`` axis; plus a keep-mask for ``zero``."""
    idx = torch.arange(-left, n + right, device=device)
    if mode == "symmetric":  # half-sample: c b a | a b c | c b a
        m = torch.remainder(idx, 2 * n)
        return torch.where(m < n, m, 2 * n - 1 - m), None
    if mode == "periodic":
        return torch.remainder(idx, n), None
    if mode == "reflect":  # whole-sample: c b | a b c | b a
        if n == 1:
            raise ValueError("mode 'reflect' needs at least 2 samples along each axis")
        m = torch.remainder(idx, 2 * n - 2)
        return torch.where(m < n, m, 2 * n - 2 - m), None
    if mode == "constant":  # edge value repeated
        return idx.clamp(0, n - 1), None
    if mode == "zero":
        return idx.clamp(0, n - 1), (idx >= 0) & (idx < n)
    raise ValueError(f"unsupported mode {mode!r}; expected one of {DWT_MODES}")


def _filter_last(x: Tensor, lo: Tensor, hi: Tensor, idx: Tensor, mask: Tensor | None, step: int) -> Tensor:
    """Correlate the last axis with both filters after gathering ``idx``.

    Returns ``[..., n_out, 2]`` with index 0 = lowpass, 1 = highpass.
    """
    if portable():  # the same windows, gathered in one index_select (exporters cannot unfold)
        win = gather_windows(x, window_index(idx, lo.numel(), step))  # [..., n_out, L]
        if mask is not None:
            win = win * window_index(mask, lo.numel(), step).to(win.dtype)
        # both filters as one [L, 2] matrix: ONNX Runtime runs a MatMul by a 1-D vector as one
        # tiny product per row (0.5 s for two of them at 518 px), a 2-D right operand as one GEMM
        return win @ torch.stack((lo, hi), dim=1)
    xp = x.index_select(-1, idx)
    if mask is not None:
        xp = xp * mask.to(xp.dtype)
    win = xp.unfold(-1, lo.numel(), step)  # [..., n_out, L]
    return torch.stack((win @ lo, win @ hi), dim=-1)


def _analysis_2d(x: Tensor, wavelet: str, kind: str, mode: str = "symmetric") -> Tensor:
    """One-level separable analysis of the last two axes.

    Returns ``[..., 2, H', W', 2]``: dim -4 = band along rows (0 lo, 1 hi),
    dim -1 = band along columns (0 lo, 1 hi).
    """
    # taps made while tracing are tracer values: never cache them
    lo, hi = (_taps.__wrapped__ if tracing() else _taps)(wavelet, x.dtype, x.device)
    L = lo.numel()
    out = x
    for axis_is_rows in (True, False):
        y = out.transpose(-1, -2) if axis_is_rows else out
        n = y.shape[-1]
        if kind == "swt":  # out[k] = sum_t g[t] x[(k - L/2 + 1 + t) mod n]
            idx, mask = _extension_index(n, L // 2 - 1, L // 2, "periodic", x.device)
            step = 1
        else:  # out[k] = sum_t g[t] x~[2k + t - L + 2], k < floor((n + L - 1) / 2)
            idx, mask = _extension_index(n, L - 2, L - 1, mode, x.device)
            step = 2
        z = _filter_last(y, lo, hi, idx, mask, step)  # [..., n_out, 2]
        if axis_is_rows:
            # [..., W, H', 2] -> [..., 2, H', W] (positive axes: exporters mishandle negative ones)
            d = z.dim()
            out = z.permute(*range(d - 3), d - 1, d - 2, d - 3)
        else:
            out = z  # [..., 2, H', W', 2]
    return out


def _split_bands(z: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    a = z[..., 0, :, :, 0].contiguous()
    h = z[..., 1, :, :, 0].contiguous()  # detail along rows (axis -2)
    v = z[..., 0, :, :, 1].contiguous()  # detail along columns (axis -1)
    d = z[..., 1, :, :, 1].contiguous()
    return a, h, v, d


def _check_2d(x: Tensor, name: str) -> None:
    if x.dim() < 2:
        raise ValueError(f"{name}: expected a tensor [..., H, W], got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got {x.dtype}")


def swt2_level1(x: Tensor, wavelet: str = "sym2") -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One-level stationary 2-D wavelet transform, equal to ``pywt.swt2(x, wavelet, level=1)[0]``.

    Periodic extension, no normalisation (PyWavelets' ``norm=False``), bands in
    PyWavelets' order. Like PyWavelets, both sizes must be even.

    Args:
        x: Tensor of shape ``[B, H, W]`` (any leading axes; the transform acts on the
            last two).
        wavelet: PyWavelets name of a discrete wavelet.

    Returns:
        ``(A, H, V, D)``, each ``[B, H, W]``: approximation, detail along rows
        (axis -2), detail along columns (axis -1), diagonal detail.
    """
    _check_2d(x, "swt2_level1")
    if x.shape[-2] % 2 or x.shape[-1] % 2:
        raise ValueError(
            f"swt2_level1: both sizes must be even (as in pywt.swt2), got {tuple(x.shape[-2:])}; "
            "spatial_to_wavelet pads odd sizes"
        )
    return _split_bands(_analysis_2d(x, wavelet, "swt"))


def dwt2(x: Tensor, wavelet: str = "haar", mode: str = "symmetric") -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One-level 2-D discrete wavelet transform, equal to ``pywt.dwt2(x, wavelet, mode=mode)``.

    Any sizes, odd included. Modes: ``symmetric`` (PyWavelets' default),
    ``periodic``, ``reflect``, ``constant``, ``zero``.

    Args:
        x: Tensor of shape ``[B, H, W]`` (any leading axes; the transform acts on the
            last two).
        wavelet: PyWavelets name of a discrete wavelet.
        mode: signal extension mode (PyWavelets name).

    Returns:
        ``(A, H, V, D)``, each ``[B, H', W']`` with ``H' = floor((H + L - 1) / 2)``,
        ``W' = floor((W + L - 1) / 2)`` for filter length ``L`` (``ceil(H/2)``,
        ``ceil(W/2)`` for Haar).
    """
    _check_2d(x, "dwt2")
    if mode not in DWT_MODES:
        raise ValueError(f"dwt2: unsupported mode {mode!r}; expected one of {DWT_MODES}")
    return _split_bands(_analysis_2d(x, wavelet, "dwt", mode))


def dwt2_haar(x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``pywt.dwt2(x, "haar", mode="symmetric")`` in torch; see :func:`dwt2`.

    Args:
        x: Tensor of shape ``[B, H, W]``.

    Returns:
        ``(A, H, V, D)``, each ``[B, ceil(H/2), ceil(W/2)]``.
    """
    return dwt2(x, "haar", "symmetric")


def _pad_odd_edge(x: Tensor) -> Tensor:
    """Append one edge-replicated row / column to an odd last-two-axes size."""
    h, w = x.shape[-2], x.shape[-1]
    if h % 2:
        x = torch.cat([x, x[..., -1:, :]], dim=-2)
    if w % 2:
        x = torch.cat([x, x[..., :, -1:]], dim=-1)
    return x


def spatial_to_wavelet(
    features: Tensor,
    swt_approx: float = 0.1,
    swt_detail: float = 0.9,
    dwt_approx: float = 0.9,
    dwt_detail: float = 0.1,
    dwt_mix: float = 0.99,
    swt_mix: float = 0.01,
) -> Tensor:
    """Spatial-to-wavelet transform ``w(F)`` of patch features (``docs/method.md`` §6.2).

    With each image's ``[N, C]`` matrix as a 2-D signal:

    * ``(A, H, V, D) = swt2(F, "sym2", level 1)``; ``z = swt_approx * A + swt_detail * (H + V + D)``;
    * ``(A', H', V', D') = dwt2(F, "haar", "symmetric")``;
      ``l = dwt_approx * A' + dwt_detail * (H' + V' + D') / 3``, resized to ``N x C``
      (bilinear, ``align_corners=False``);
    * ``w(F) = dwt_mix * l + swt_mix * z`` (not re-normalised).

    An odd ``N`` and/or ``C`` is padded by one edge-replicated row/column for the
    stationary transform only, and the result cropped back to ``N x C``.

    Args:
        features: Tensor of shape ``[B, N, C]`` (normalised patch features, class token
            included). Any leading axes are accepted.
        swt_approx: weight of the stationary approximation band.
        swt_detail: weight of the summed stationary detail bands.
        dwt_approx: weight of the Haar approximation band.
        dwt_detail: weight of the mean of the Haar detail bands.
        dwt_mix: weight of the (resized) Haar branch in the output.
        swt_mix: weight of the stationary branch in the output.

    Returns:
        Tensor of shape ``[B, N, C]``, same dtype and device as ``features``.
    """
    _check_2d(features, "spatial_to_wavelet")
    n, c = features.shape[-2], features.shape[-1]

    # (i) stationary sym2, periodic; odd sizes padded by edge replication then cropped.
    zs = _analysis_2d(_pad_odd_edge(features), "sym2", "swt")[..., :n, :c, :]
    a, h, v, d = zs[..., 0, :, :, 0], zs[..., 1, :, :, 0], zs[..., 0, :, :, 1], zs[..., 1, :, :, 1]
    z = a * swt_approx + (h + v + d) * swt_detail

    # (ii) Haar DWT, symmetric; approximation + mean detail, resized back to N x C.
    zd = _analysis_2d(features, "haar", "dwt", "symmetric")
    a2, h2, v2, d2 = zd[..., 0, :, :, 0], zd[..., 1, :, :, 0], zd[..., 0, :, :, 1], zd[..., 1, :, :, 1]
    low = a2 * dwt_approx + ((h2 + v2 + d2) / 3) * dwt_detail
    lead = low.shape[:-2]
    low = low.reshape(-1, 1, *low.shape[-2:])
    low = F.interpolate(low, size=(n, c), mode="bilinear", align_corners=False)
    low = low.reshape(*lead, n, c)

    return low * dwt_mix + z * swt_mix
