"""AUPRO: the area under the per-region-overlap (PRO) curve, exact or on the released code's grid.

* ``aupro(method="exact")`` is the MVTec AD definition: over every distinct threshold ``t``, the
  point (FPR, PRO) with FPR = negative pixels scoring >= t / all negative pixels, PRO = mean over
  all ground-truth connected components (8-connectivity, per image, over all images) of the
  fraction of the component scoring >= t; starting from (0, 0) the curve is integrated with the
  trapezoid rule up to ``max_fpr`` (linearly interpolating the point at exactly ``max_fpr``) and
  divided by ``max_fpr``. Implementation: one connected-component labelling per image; only the
  negatives that can lie below ``max_fpr`` are kept (their cut-off is located from a strided
  sample and verified exactly, falling back to all negatives when the check fails), sorted, and
  the area is accumulated per positive pixel from rank counts (each trapezoid of the curve is a
  run of equal negative scores, so the area equals
  ``sum_neg [W(>s) + W(=s)/2] / N`` with ``W`` the region-weighted positive mass).
  Extra memory: the kept negatives (for float32 maps and max_fpr 0.3 about 1.3 bytes per pixel,
  a third of the maps' own size) plus about 50 bytes per anomalous pixel.
* ``aupro(method="grid200")`` is the paper-compatible variant of the released S2SW/AnomalyCLIP
  code: thresholds ``np.arange(min, max, (max-min)/200)`` over all maps, a pixel is positive when
  ``map > threshold``, PRO averaged over all regions, points with FPR < ``max_fpr`` kept, their
  FPR axis min-max rescaled to [0,1], trapezoid area. It is computed with one labelling per image
  and per-region histograms of threshold-bin indices plus cumulative sums, and equals the
  threshold-by-threshold loop to float rounding.

The grid200 thresholds are those the released code got under NumPy 1.x, whatever NumPy is
installed. There, with float32 maps, ``min_th, max_th = maps.min(), maps.max()`` are float32
scalars and ``delta = (max_th - min_th) / 200`` was float64 (an operation on NumPy scalars
alone promoted ``float32 / int`` like ``float32 / int64``); ``np.arange`` therefore produced
float64 thresholds, and ``maps > th`` -- a float32 array against a float64 scalar -- was
evaluated in float32 by value-based casting, i.e. against ``th`` rounded to float32. Under
NumPy >= 2 (NEP 50) the same lines keep ``delta`` in float32 and compare in float64, which
shifts the grid (measured on 20 maps: 3.7e-8 on the area at 518², up to 5.7e-6 at 48²).
:func:`_released_thresholds` writes NumPy 1.x's steps out: (1) ``span = max - min`` rounded to
the maps' precision; (2) ``delta = span / 200`` in float64; (3) arange's length
``ceil(span / delta)`` in float64 (200, or 201 for about one range in twenty); (4) the first two
thresholds ``start = min`` and ``second = start + delta``; (5) arange's fill loop
``start + i * (second - start)`` for the rest (a multiply then an add, as NumPy's x86-64 builds
compute it); (6) each threshold rounded to the maps' precision for the comparison. float64 maps
compute everything in float64, the same under either NumPy. (Checked against NumPy 1.26.4:
identical thresholds on 5,518 random ranges, identical area on 20 maps of 518².)

Undefined cases raise :class:`~.inputs.UndefinedMetricError`: masks without any anomalous
region, no normal pixel, constant maps for grid200 (its grid is empty). Constant maps are well
defined for the exact method: the curve jumps from (0, 0) to (1, 1), so the interpolated overlap
at ``max_fpr`` is ``max_fpr`` and the value is ``max_fpr / 2``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import ndimage

from ...errors import S2SWError
from .inputs import UndefinedMetricError, _check_finite, _chunks, _pair

__all__ = ["AUPRO_METHODS", "aupro"]

# Exact AUPRO: below this many negatives all of them are kept (no sampling step).
_SAMPLE_MIN_NEGATIVES = 1 << 21
_SAMPLE_TARGET = 1 << 19

# 8-connectivity (the default of skimage.measure.label and of the MVTec AD evaluation).
_EIGHT = np.ones((3, 3), dtype=bool)


def _label_regions(m: np.ndarray):
    """Connected components (8-connectivity) of each image of a bool stack [n,H,W], labelled once.

    Yields ``(image, (rows, cols), sub, lab, n)`` for every image with anomalous pixels, where
    ``sub = m[image][rows, cols]`` is the mask cropped to its bounding box and ``lab`` its labels
    1..n. ``x[image][rows, cols][sub]`` lists that image's anomalous pixels in raster order.
    """
    flat = m.reshape(m.shape[0], -1)
    for b in np.flatnonzero(flat.any(axis=1)):
        rows = np.flatnonzero(m[b].any(axis=1))
        cols = np.flatnonzero(m[b].any(axis=0))
        sl = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
        sub = m[b][sl]
        lab, n = ndimage.label(sub, structure=_EIGHT)
        yield int(b), sl, sub, lab, int(n)


def _check_max_fpr(max_fpr: float) -> float:
    try:
        max_fpr = float(max_fpr)
    except (TypeError, ValueError):
        raise S2SWError(f"max_fpr must be a number in (0, 1], got {max_fpr!r}") from None
    if not (0.0 < max_fpr <= 1.0):
        raise S2SWError(f"max_fpr must be in (0, 1], got {max_fpr}")
    return max_fpr


def _no_regions(n_regions: int, n_neg: int) -> None:
    if n_regions == 0:
        raise UndefinedMetricError(
            "pixel_aupro is undefined: the masks contain no anomalous region"
        )
    if n_neg == 0:
        raise UndefinedMetricError(
            "pixel_aupro is undefined: every pixel is anomalous, so the false-positive rate is undefined"
        )


def _crossing_count(n_neg: int, max_fpr: float) -> int:
    """Smallest count c of negatives with c / n_neg > max_fpr (n_neg + 1 when none exists)."""
    c = int(math.floor(max_fpr * n_neg)) + 1
    while c > 1 and (c - 1) / n_neg > max_fpr:
        c -= 1
    while c <= n_neg and not (c / n_neg > max_fpr):
        c += 1
    return c


def _aupro_exact(masks: Any, maps: Any, max_fpr: float) -> float:
    ms, xs = _pair(masks, maps)
    dtype = xs.work_dtype
    pv, pr, n_regions, n_neg, samples = _positives_and_sample(ms, xs, dtype)
    areas = np.bincount(pr, minlength=n_regions).astype(np.float64)
    c = _crossing_count(n_neg, max_fpr)
    v_lo, expected = _negative_floor(samples, c, n_neg)
    del samples
    negs = _collect_negatives(ms, xs, dtype, v_lo, expected)
    if v_lo is not None and negs.size < c:  # the sample guessed too high: keep every negative
        del negs
        negs = _collect_negatives(ms, xs, dtype, None, n_neg)
    negs.sort()
    return _exact_area(negs, pv, pr, areas, n_regions, n_neg, c, max_fpr)


def _positives_and_sample(ms, xs, dtype) -> tuple[np.ndarray, np.ndarray, int, int, list[np.ndarray]]:
    """Pass A, one labelling per image: the positive scores with their region (numbered across
    the stack), the number of regions and of negatives, and a strided sample of negative scores."""
    stride = max(1, xs.pixels // _SAMPLE_TARGET) | 1
    pos_vals, pos_regs, samples = [], [], []
    n_regions = n_neg = 0
    for i, j in _chunks(xs):
        m, x = ms.binary(i, j), xs.values(i, j, dtype)
        _check_finite(x, "maps")
        n_pos_chunk = 0
        for b, sl, sub, lab, nreg in _label_regions(m):
            pos_vals.append(x[b][sl][sub])
            reg = lab[sub]
            reg += n_regions - 1
            pos_regs.append(reg)
            n_pos_chunk += reg.size
            n_regions += nreg
        n_neg += m.size - n_pos_chunk
        start = (-i * m[0].size) % stride  # every stride-th pixel of the whole stack
        xf, mf = x.reshape(-1)[start::stride], m.reshape(-1)[start::stride]
        samples.append(xf[~mf])
    _no_regions(n_regions, n_neg)
    pv = np.concatenate(pos_vals)
    pr = np.concatenate(pos_regs).astype(np.intp, copy=False)
    return pv, pr, n_regions, n_neg, samples


def _negative_floor(samples: list[np.ndarray], c: int, n_neg: int) -> tuple[Any, int]:
    """A lower bound for the negatives that can matter below max_fpr, estimated from the sample
    (None: keep every negative; verified by the caller), and how many negatives it should keep."""
    v_lo, expected = None, n_neg
    if c <= n_neg and n_neg >= _SAMPLE_MIN_NEGATIVES:
        samp = np.concatenate(samples)
        q = c / n_neg
        r = int(math.ceil(q * samp.size + 6.0 * math.sqrt(samp.size * q * (1 - q)) + 16))
        if r < samp.size:
            v_lo = np.partition(samp, samp.size - r)[samp.size - r]
            share = np.count_nonzero(samp >= v_lo) / samp.size
            expected = min(n_neg, int(share * n_neg * 1.05) + 4096)
    return v_lo, expected


def _collect_negatives(ms, xs, dtype, lo, capacity: int) -> np.ndarray:
    """The negative scores (those >= ``lo`` when given) in one buffer of ``capacity`` (grown only
    if the estimate was short): no concatenation copy."""
    buf, n = np.empty(capacity, dtype=dtype), 0
    for i, j in _chunks(xs):
        m, x = ms.binary(i, j), xs.values(i, j, dtype)
        if lo is None:
            part = x[~m]
        else:
            sel = np.greater_equal(x, lo)
            sel &= ~m
            part = x[sel]
        if n + part.size > buf.size:
            grown = np.empty(max(n + part.size, buf.size + buf.size // 2), dtype=dtype)
            grown[:n] = buf[:n]
            buf = grown
        buf[n : n + part.size] = part
        n += part.size
    return buf[:n]


def _exact_area(negs: np.ndarray, pv: np.ndarray, pr: np.ndarray, areas: np.ndarray, n_regions: int,
                n_neg: int, c: int, max_fpr: float) -> float:
    """The normalised area under the PRO curve up to ``max_fpr`` from the sorted negatives and the
    positives with their regions (the last segment interpolated at ``max_fpr``)."""
    if c <= n_neg:
        u_b = negs[negs.size - c]  # the score at which FPR first exceeds max_fpr
        base = int(np.searchsorted(negs, u_b, side="right"))
        n_gt = negs.size - base
        n_ge = negs.size - int(np.searchsorted(negs, u_b, side="left"))
        above = pv > u_b
    else:  # max_fpr == 1: the whole curve
        base, n_gt, n_ge = 0, n_neg, n_neg
        above = np.ones(pv.size, dtype=bool)

    pv_a, pr_a = pv[above], pr[above]
    order = np.argsort(pv_a, kind="stable")  # sorted keys make the searches cache-friendly
    pv_a, pr_a = pv_a[order], pr_a[order]
    lt = np.searchsorted(negs, pv_a, side="left")
    le = np.searchsorted(negs, pv_a, side="right")
    cnt = (lt - base).astype(np.float64) + 0.5 * (le - lt)
    per_region = np.bincount(pr_a, weights=cnt, minlength=n_regions)
    area = float(np.sum(per_region / areas)) / n_regions / n_neg

    if c <= n_neg:
        w_gt = float(np.sum(np.bincount(pr_a, minlength=n_regions) / areas)) / n_regions
        eq = pv == u_b
        w_eq = float(np.sum(np.bincount(pr[eq], minlength=n_regions) / areas)) / n_regions
        f_prev, f_cur = n_gt / n_neg, n_ge / n_neg
        if max_fpr > f_prev:
            y = w_gt + w_eq * (max_fpr - f_prev) / (f_cur - f_prev)
            area += 0.5 * (w_gt + y) * (max_fpr - f_prev)
    return area / max_fpr


def _released_thresholds(lo: float, hi: float, dtype: np.dtype, max_step: int = 200) -> np.ndarray:
    """The released code's thresholds ``np.arange(min, max, (max - min) / max_step)`` exactly as
    NumPy 1.x computed them, as values of the maps' working dtype [T] (T = max_step, rarely + 1).

    ``lo`` < ``hi`` are the minimum and maximum of the maps in their working ``dtype`` (float32
    or float64). A pixel is positive at threshold t when ``map > ths[t]``. Each step of NumPy
    1.x's arithmetic is written out (module docstring), so the grid does not depend on the
    installed NumPy.
    """
    dtype = np.dtype(dtype)
    with np.errstate(over="ignore"):
        span = float(dtype.type(hi) - dtype.type(lo))  # (1) same-type scalars: rounded to dtype
    delta = span / max_step  # (2) NumPy 1.x: float32 scalar / Python int -> float64
    if not (math.isfinite(span) and delta > 0):
        raise UndefinedMetricError(
            f"pixel_aupro (grid200) is undefined: the maps' range max - min = {span} cannot be "
            f"split into {max_step} steps"
        )
    n = math.ceil(span / delta)  # (3) arange's length: ceil((stop - start) / step) in float64
    start = float(lo)
    second = start + delta  # (4) arange stores start and start + step, then ...
    ths = np.arange(n, dtype=np.float64) * (second - start)
    ths += start  # (5) ... fills start + i * (second - start) for i >= 2
    ths[0] = start
    if n > 1:
        ths[1] = second
    # (6) a float32 array compared with a float64 scalar was compared in float32 (value-based
    # casting): against the threshold rounded to the nearest float32
    return ths.astype(dtype)


class _Grid:
    """Bin index k(x) = #{t : f_t <= x} for a non-decreasing, nearly even grid f (float dtype).

    k is estimated as floor((x - f_0) / d) + 1 with d the mean spacing. The estimate can only be
    wrong when (x - f_0) / d lies within ``tol`` of an integer, where ``tol`` bounds the grid's
    deviation from an even grid plus the rounding of the estimate; those few pixels are resolved
    exactly with a binary search. A grid too uneven for this (tol >= 0.25) uses the search for all.
    """

    def __init__(self, f: np.ndarray):
        self.f = f
        T = f.size
        span = float(f[-1]) - float(f[0])
        self.T = T
        if T < 2 or not span > 0:
            self.inv = None
            return
        d = span / (T - 1)
        even = float(f[0]) + d * np.arange(T, dtype=np.float64)
        dev = float(np.max(np.abs(f.astype(np.float64) - even))) / d
        tol = dev + 8.0 * float(np.finfo(f.dtype).eps) * (T + 2) + 1e-9
        if tol >= 0.25:
            self.inv = None
            return
        self.inv = f.dtype.type(1.0 / d)
        self.lo = f.dtype.type(tol)
        self.hi = f.dtype.type(1.0 - tol)

    def index(self, x: np.ndarray) -> np.ndarray:
        if self.inv is None:
            return np.searchsorted(self.f, x, side="right")
        with np.errstate(over="ignore", invalid="ignore"):
            r = np.subtract(x, self.f[0])
            r *= self.inv
            e = np.floor(r)
            r -= e  # fractional part in [0, 1)
            unsure = r < self.lo
            unsure |= r > self.hi
            e += 1
            np.clip(e, 0, self.T, out=e)
        k = e.astype(np.intp)
        if unsure.any():
            k[unsure] = np.searchsorted(self.f, x[unsure], side="right")
        return k


def _aupro_grid200(masks: Any, maps: Any, max_fpr: float, max_step: int = 200) -> float:
    """The released code's 200-threshold AUPRO (module docstring), from per-region histograms."""
    ms, xs = _pair(masks, maps)
    dtype = xs.work_dtype
    lo = hi = None
    for i, j in _chunks(xs):
        x = xs.values(i, j, dtype)
        cmin, cmax = x.min(), x.max()
        if not (np.isfinite(cmin) and np.isfinite(cmax)):
            raise S2SWError("maps contain NaN or infinite values; every score must be finite")
        lo = cmin if lo is None else min(lo, cmin)
        hi = cmax if hi is None else max(hi, cmax)
    if not hi > lo:
        raise UndefinedMetricError(
            "pixel_aupro (grid200) is undefined for constant maps: the 200-threshold grid is empty"
        )
    ths = _released_thresholds(lo, hi, dtype, max_step)
    T = ths.size
    f = np.nextafter(ths, dtype.type(np.inf))  # map > ths[t]  <=>  map >= f[t], both in dtype
    grid = _Grid(f)

    neg_hist = np.zeros(T + 1, dtype=np.int64)
    region_hists, n_neg = [], 0
    for i, j in _chunks(xs):
        m, x = ms.binary(i, j), xs.values(i, j, dtype)
        k = grid.index(x.reshape(-1))
        neg_hist += np.bincount(k, minlength=T + 1)
        k = k.reshape(x.shape)
        n_pos_chunk = 0
        for b, sl, sub, lab, nreg in _label_regions(m):
            idx = lab[sub].astype(np.intp)
            idx -= 1
            idx *= T + 1
            idx += k[b][sl][sub]
            rh = np.bincount(idx, minlength=nreg * (T + 1)).reshape(nreg, T + 1)
            region_hists.append(rh)
            neg_hist -= rh.sum(axis=0)
            n_pos_chunk += idx.size
        n_neg += m.size - n_pos_chunk
    n_regions = sum(h.shape[0] for h in region_hists)
    _no_regions(n_regions, n_neg)
    rh = np.concatenate(region_hists)
    area = rh.sum(axis=1).astype(np.float64)
    # counts of pixels with bin index k > t, i.e. map > ths[t], for t = 0..T-1
    tp = np.cumsum(rh[:, ::-1], axis=1)[:, ::-1][:, 1:]
    fp = np.cumsum(neg_hist[::-1])[::-1][1:]
    pros = (tp / area[:, None]).mean(axis=0)
    fprs = fp / n_neg
    keep = fprs < max_fpr
    fk, pk = fprs[keep], pros[keep]
    if fk.size < 2 or not fk.max() > fk.min():
        raise UndefinedMetricError(
            f"pixel_aupro (grid200) is undefined: fewer than two distinct thresholds give FPR < {max_fpr}"
        )
    fk = (fk - fk.min()) / (fk.max() - fk.min())
    direction = -1.0 if np.all(np.diff(fk) <= 0) else 1.0
    trapezoid = getattr(np, "trapezoid", None) or np.trapz
    return float(direction * trapezoid(pk, fk))


_METHODS = {"exact": _aupro_exact, "grid200": _aupro_grid200}

#: The AUPRO methods, the one list (the CLI's ``--aupro`` choices and reports use it).
AUPRO_METHODS = tuple(_METHODS)


def aupro(masks: Any, maps: Any, max_fpr: float = 0.3, method: str = "exact") -> float:
    """Area under the per-region-overlap curve up to ``max_fpr``, normalised to [0, 1].

    ``method="exact"`` (default): MVTec AD definition over all distinct thresholds.
    ``method="grid200"``: the released S2SW code's 200-threshold computation with the FPR axis
    min-max rescaled (compare with published tables), with the thresholds NumPy 1.x gave it.
    See the module docstring for both.
    """
    max_fpr = _check_max_fpr(max_fpr)
    if method not in _METHODS:
        raise S2SWError(f"unknown AUPRO method {method!r}; choose one of {', '.join(AUPRO_METHODS)}")
    return _METHODS[method](masks, maps, max_fpr)
