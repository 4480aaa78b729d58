"""Portable forms of the operators that do not export, with the same numbers, and their switch.

``F.interpolate(mode="linear")`` on one axis, ``F.adaptive_avg_pool1d`` /
``F.adaptive_max_pool1d`` and ``Tensor.unfold`` do not survive model export: the ONNX exporter
refuses adaptive pooling whose output size does not divide the input (1370 -> 384 tokens),
OpenVINO's PyTorch frontend cannot convert ``unfold``, and OpenVINO's CPU plugin rejects a 1-D
linear ``Interpolate`` in bfloat16. The forms here compute the same values with
``index_select`` through small constant index tables, elementwise arithmetic and reductions
(pooling exactly; linear resampling with PyTorch's positions and weights, to float rounding).
Index tables are O(output size x window), never a dense [input x output] matrix.

The model functions (:mod:`.multiscale`, :mod:`.smoothing`, :mod:`.wavelet`) keep PyTorch's
operators in eager use (faster there, and what the formula tests pin down) and switch to these
forms when :func:`portable` is true (:mod:`.references`' nearest-neighbour search then runs
over all query rows at once instead of looping over chunks of them): while ``torch.export`` / the ONNX exporter or
``torch.jit.trace`` runs, or inside :func:`portable_forms` (the export code and the tests
that compare both forms use it).

Index tables are built from Python integers on every call (microseconds), so that a trace
sees them as constants and no tensor is cached across calls (a cache filled while tracing
would hold tracer values).
"""

from __future__ import annotations

import contextlib
import contextvars
from functools import lru_cache
from typing import Iterator

import torch
from torch import Tensor

__all__ = ["portable", "portable_forms", "tracing", "linear_resample", "adaptive_pool", "gather_windows",
           "window_index"]

_PORTABLE = contextvars.ContextVar("s2swclip_portable_forms", default=False)


def tracing() -> bool:
    """True while ``torch.export`` (the ONNX exporter) or ``torch.jit.trace`` runs the model:
    tensors made then are tracer values, which must not be kept in a cache."""
    return torch.compiler.is_exporting() or torch.jit.is_tracing()


def portable() -> bool:
    """True while the model should use the export-friendly forms (see the module docstring)."""
    return _PORTABLE.get() or tracing()


@contextlib.contextmanager
def portable_forms() -> Iterator[None]:
    """Use the portable forms inside the block (also in eager execution)."""
    token = _PORTABLE.set(True)
    try:
        yield
    finally:
        _PORTABLE.reset(token)


def _opmath(dtype: torch.dtype) -> torch.dtype:
    """The precision PyTorch's CPU kernels compute positions and weights in for ``dtype``."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _linear_taps(n_in: int, n_out: int, dtype: torch.dtype, device):
    """Source indices and weights of PyTorch's linear resampling with ``align_corners=True``,
    in its own arithmetic.

    ``out[i] = x[i0[i]] * w0[i] + x[i1[i]] * w1[i]``; positions ``i * s`` with the scale
    ``s = (n_in - 1) / (n_out - 1)`` computed in ``dtype`` (one rounding each, as in PyTorch's
    kernel), ``i0 = min(floor(pos), n_in - 1)``, ``i1 = i0 + (i0 < n_in - 1)``,
    ``w1 = clamp(pos - i0, 0, 1)``, ``w0 = 1 - w1``; equal sizes copy.
    """
    i = torch.arange(n_out, device=device)
    if n_in == n_out:
        ones = torch.ones(n_out, dtype=dtype, device=device)
        return i, i, ones, torch.zeros_like(ones)
    scale = torch.tensor(n_in - 1, dtype=dtype, device=device) / (n_out - 1) if n_out > 1 else 0.0
    pos = i.to(dtype) * scale
    i0 = pos.floor().to(torch.int64).clamp(max=n_in - 1)
    i1 = i0 + (i0 < n_in - 1).to(torch.int64)
    w1 = (pos - i0.to(dtype)).clamp(0, 1)
    return i0, i1, 1 - w1, w1


def linear_resample(x: Tensor, size: int, *, keep: int | None = None) -> Tensor:
    """Linear resampling of the last axis, equal to
    ``F.interpolate(x, size, mode="linear", align_corners=True)``.

    The positions are PyTorch's to the bit; the two products may round differently where
    PyTorch's kernel fuses them (one float rounding of the output).

    Args:
        x: Tensor of shape ``[..., L]`` (floating point).
        size: output length ``L'`` the positions are computed for.
        keep: compute only the first ``keep`` outputs (default all ``L'``), i.e.
            ``F.interpolate(...)[..., :keep]`` without computing the rest.

    Returns:
        Tensor of shape ``[..., keep or L']``, dtype of ``x``.
    """
    op = _opmath(x.dtype)
    i0, i1, w0, w1 = _linear_taps(x.shape[-1], int(size), op, x.device)
    if keep is not None:
        i0, i1, w0, w1 = i0[:keep], i1[:keep], w0[:keep], w1[:keep]
    out = x.index_select(-1, i0).to(op) * w0 + x.index_select(-1, i1).to(op) * w1
    return out.to(x.dtype)


@lru_cache(maxsize=64)
def _adaptive_bins(n_in: int, n_out: int) -> tuple[tuple[int, ...], tuple[int, ...], int]:
    """PyTorch's adaptive bins ``[floor(i L / P), ceil((i + 1) L / P))`` as a padded table.

    Returns ``(index, count, width)``: ``index`` row-major ``[P, width]`` with each bin's
    members, padded by repeating its last member; ``count`` the members of each bin.
    """
    starts = [(i * n_in) // n_out for i in range(n_out)]
    ends = [-(-((i + 1) * n_in) // n_out) for i in range(n_out)]
    width = max(e - s for s, e in zip(starts, ends))
    index = tuple(min(s + j, e - 1) for s, e in zip(starts, ends) for j in range(width))
    return index, tuple(e - s for s, e in zip(starts, ends)), width


def adaptive_pool(x: Tensor, size: int, reduce: str) -> Tensor:
    """Adaptive average or max pooling of the last axis, equal to ``F.adaptive_*_pool1d``.

    Bins are PyTorch's (they overlap when ``size > L``); the mean sums each bin's members in
    order, as PyTorch's CPU kernel does, then divides by the member count.

    Args:
        x: Tensor of shape ``[..., L]``.
        size: number of bins ``P``.
        reduce: ``"mean"`` or ``"max"``.

    Returns:
        Tensor of shape ``[..., P]``.
    """
    if reduce not in ("mean", "max"):
        raise ValueError(f"reduce must be 'mean' or 'max', got {reduce!r}")
    index, count, width = _adaptive_bins(x.shape[-1], int(size))
    idx = torch.tensor(index, dtype=torch.int64, device=x.device)
    win = x.index_select(-1, idx).unflatten(-1, (int(size), width))  # [..., P, width]
    if reduce == "max":
        return win.amax(dim=-1)
    counts = torch.tensor(count, device=x.device)
    total = win[..., 0]
    for j in range(1, width):  # padded members add exactly zero
        total = total + win[..., j] * (counts > j).to(x.dtype)
    return total / counts.to(x.dtype)


def window_index(index: Tensor, size: int, step: int) -> Tensor:
    """Sliding windows over an index vector: what ``index.unfold(0, size, step)`` holds.

    Args:
        index: [M] indices (e.g. a padding map).
        size: window length.
        step: distance between window starts.

    Returns:
        [n_out, size] with ``n_out = (M - size) // step + 1``.
    """
    n_out = (index.shape[0] - size) // step + 1
    starts = torch.arange(n_out, device=index.device) * step
    return index[starts[:, None] + torch.arange(size, device=index.device)]


def gather_windows(x: Tensor, windows: Tensor) -> Tensor:
    """``x[..., windows]`` for a 2-D index table: [..., L] -> [..., n_out, size]."""
    return x.index_select(-1, windows.reshape(-1)).unflatten(-1, tuple(windows.shape))
