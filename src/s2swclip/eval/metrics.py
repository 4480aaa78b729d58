"""Anomaly-detection metrics: image/pixel AUROC, AP, F1-max and AUPRO.

All functions accept NumPy arrays, torch tensors (any device; moved to the CPU a chunk at a time)
or sequences of per-image arrays. Image-level inputs are 1-D ``labels`` (0/1 or bool) and
``scores``. Pixel-level inputs are ``masks`` and ``maps`` shaped ``[N,H,W]`` (``[N,1,H,W]`` and a
single ``[H,W]`` image are accepted too). Masks are binarised at 0.5 (bool masks are used as they
are), the same rule the data pipeline applies.

Methods (all exact; none uses a fixed grid of thresholds except ``aupro(method="grid200")``):

* AUROC, AP and F1-max follow scikit-learn's ``roc_auc_score``, ``average_precision_score`` and
  ``precision_recall_curve`` (ties included) up to float rounding. They are computed from ranks:
  the positive scores are sorted and made unique, and for every distinct positive value ``u`` the
  number of negatives below ``u`` and equal to ``u`` is counted by sorting the negatives (a chunk
  of at most 16M pixels at a time) and binary-searching the positive values in each sorted chunk.
  AUROC is then the Mann-Whitney statistic ``sum_u n_pos(u) * (#neg<u + #neg==u / 2) / (P*N)``
  (equal to the trapezoid area under the ROC curve), AP is ``sum_u n_pos(u)/P * precision(u)``
  and F1-max is the largest ``2TP / (2TP + FP + FN)`` over the distinct thresholds (the maximum is
  always reached at a threshold equal to some positive score). Memory: the positive pixels plus
  one chunk; time: one sort of all pixels in pieces, no float64 copy of the maps.
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

Degenerate inputs never give a silent NaN: a metric that is undefined (only one class present, no
ground-truth region, constant maps for ``grid200``) raises :class:`UndefinedMetricError`, a subclass
of :class:`s2swclip.errors.S2SWError`; invalid inputs (shape mismatch, NaN/inf scores, non-binary
labels) raise ``S2SWError``. Well-defined corner cases keep their value: constant scores give
AUROC 0.5, AP = positive fraction P/(P+N), F1-max = 2P/(2P+N), exact AUPRO = ``max_fpr / 2``
(the curve jumps from (0, 0) to (1, 1), so the interpolated overlap at ``max_fpr`` is
``max_fpr``). :func:`compute_metrics` records ``None`` (with a warning) for undefined metrics.

Working precision: float64 maps stay float64; every other dtype (float32/16, bfloat16, small
integers, bool) is compared as float32, 32/64-bit integers as float64.
"""

from __future__ import annotations

import math
import sys
import warnings
from typing import Any

import numpy as np
from scipy import ndimage

from ..errors import S2SWError

__all__ = [
    "METRIC_KEYS",
    "AUPRO_METHODS",
    "UndefinedMetricError",
    "image_auroc",
    "image_ap",
    "image_f1max",
    "pixel_auroc",
    "pixel_ap",
    "pixel_f1max",
    "aupro",
    "compute_metrics",
    "roc_points",
    "pr_points",
]

METRIC_KEYS = (
    "image_auroc",
    "image_ap",
    "image_f1max",
    "pixel_auroc",
    "pixel_ap",
    "pixel_f1max",
    "pixel_aupro",
)
AUPRO_METHODS = ("exact", "grid200")

# Pixels per chunk for the labelling / selection passes and for the negative sorts.
_CHUNK_PIXELS = 1 << 20
_SORT_CHUNK_PIXELS = 1 << 24
# Exact AUPRO: below this many negatives all of them are kept (no sampling step).
_SAMPLE_MIN_NEGATIVES = 1 << 21
_SAMPLE_TARGET = 1 << 19

# 8-connectivity (the default of skimage.measure.label and of the MVTec AD evaluation).
_EIGHT = np.ones((3, 3), dtype=bool)


class UndefinedMetricError(S2SWError):
    """The metric has no value for these inputs (for example only one class is present)."""


# --------------------------------------------------------------------------------------------
# input handling


def _torch_tensor_type():
    torch = sys.modules.get("torch")
    return getattr(torch, "Tensor", None) if torch is not None else None


def _to_numpy(x: Any) -> np.ndarray:
    tensor = _torch_tensor_type()
    if tensor is not None and isinstance(x, tensor):
        x = x.detach()
        if x.dtype.is_floating_point and x.dtype.itemsize < 4:  # float16 / bfloat16
            x = x.float()
        return x.cpu().numpy()
    return np.asarray(x)


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
        tensor = _torch_tensor_type()
        if isinstance(x, (list, tuple)):
            if len(x) == 0:
                raise S2SWError(f"{name} is empty")
            first = _to_numpy(x[0])
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
        self._src_dtype = _to_numpy(x[:1, :1, :1]).dtype if self.shape[0] > 0 else np.dtype(np.float32)

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def pixels(self) -> int:
        return self.shape[0] * self.shape[1] * self.shape[2]

    def _raw(self, i: int, j: int) -> np.ndarray:
        if self._seq is None:
            return _to_numpy(self._arr[i:j])
        parts = []
        for k in range(i, j):
            a = _to_numpy(self._seq[k])
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


def _chunks(stack: _Stack, max_pixels: int):
    n, h, w = stack.shape
    step = max(1, max_pixels // max(1, h * w))
    for i in range(0, n, step):
        yield i, min(n, i + step)


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


def _check_finite(x: np.ndarray, name: str) -> None:
    if not np.isfinite(x).all():
        raise S2SWError(f"{name} contain NaN or infinite values; every score must be finite")


def _image_inputs(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    y = _to_numpy(labels).reshape(-1)
    s = _to_numpy(scores).reshape(-1)
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


# --------------------------------------------------------------------------------------------
# rank statistics shared by AUROC / AP / F1-max


class _RankStats:
    """Per distinct positive score u (ascending): n_pos(u), #neg < u and #neg <= u."""

    def __init__(self, u, n_pos_u, neg_lt, neg_le, n_pos, n_neg):
        self.u, self.n_pos_u = u, n_pos_u
        self.neg_lt, self.neg_le = neg_lt, neg_le
        self.P, self.N = int(n_pos), int(n_neg)

    def auroc(self) -> float:
        eq = (self.neg_le - self.neg_lt).astype(np.float64)
        u_stat = float(np.dot(self.n_pos_u.astype(np.float64), self.neg_lt + 0.5 * eq))
        return u_stat / (float(self.P) * float(self.N))

    def _tp_fp(self):
        tp = np.cumsum(self.n_pos_u[::-1])[::-1].astype(np.float64)  # positives >= u
        fp = (self.N - self.neg_lt).astype(np.float64)  # negatives >= u
        return tp, fp

    def ap(self) -> float:
        tp, fp = self._tp_fp()
        return float(np.sum(self.n_pos_u * (tp / (tp + fp))) / self.P)

    def f1max(self) -> float:
        tp, fp = self._tp_fp()
        return float(np.max(2.0 * tp / (2.0 * tp + fp + (self.P - tp))))


def _rank_stats(pos: np.ndarray, neg_chunks, n_neg: int) -> _RankStats:
    u, n_pos_u = np.unique(pos, return_counts=True)
    lt = np.zeros(u.size, dtype=np.int64)
    le = np.zeros(u.size, dtype=np.int64)
    for neg in neg_chunks:
        if neg.size == 0:
            continue
        neg.sort()
        lt += np.searchsorted(neg, u, side="left")
        le += np.searchsorted(neg, u, side="right")
    return _RankStats(u, n_pos_u, lt, le, pos.size, n_neg)


def _need_both(n_pos: int, n_neg: int, what: str, unit: str) -> None:
    if n_pos == 0 or n_neg == 0:
        present = "normal" if n_pos == 0 else "anomalous"
        raise UndefinedMetricError(
            f"{what} {'are' if what.endswith('metrics') else 'is'} undefined: all {n_pos + n_neg} {unit} are {present}; "
            "it needs at least one normal and one anomalous"
        )


def _image_stats(labels: Any, scores: Any, what: str) -> _RankStats:
    y, s = _image_inputs(labels, scores)
    pos, neg = s[y], s[~y]
    _need_both(pos.size, neg.size, what, "images")
    return _rank_stats(pos, [neg], neg.size)


def _pixel_stats(masks: Any, maps: Any, what: str) -> _RankStats:
    ms, xs = _pair(masks, maps)
    dtype = xs.work_dtype
    pos_parts, n_neg = [], 0
    for i, j in _chunks(xs, _CHUNK_PIXELS):
        m, x = ms.binary(i, j), xs.values(i, j, dtype)
        _check_finite(x, "maps")
        pos_parts.append(x[m])
        n_neg += m.size - pos_parts[-1].size
    pos = np.concatenate(pos_parts)
    _need_both(pos.size, n_neg, what, "pixels")

    def neg_chunks():
        for i, j in _chunks(xs, _SORT_CHUNK_PIXELS):
            m, x = ms.binary(i, j), xs.values(i, j, dtype)
            yield x[~m]

    return _rank_stats(pos, neg_chunks(), n_neg)


# --------------------------------------------------------------------------------------------
# public image / pixel metrics


def image_auroc(labels: Any, scores: Any) -> float:
    """Area under the ROC curve of image scores (equals ``sklearn.metrics.roc_auc_score``)."""
    return _image_stats(labels, scores, "image_auroc").auroc()


def image_ap(labels: Any, scores: Any) -> float:
    """Average precision of image scores (equals ``sklearn.metrics.average_precision_score``)."""
    return _image_stats(labels, scores, "image_ap").ap()


def image_f1max(labels: Any, scores: Any) -> float:
    """Largest F1 = 2PR/(P+R) over all thresholds of the precision-recall curve."""
    return _image_stats(labels, scores, "image_f1max").f1max()


def pixel_auroc(masks: Any, maps: Any) -> float:
    """AUROC over all pixels of all images (exact, ties counted half)."""
    return _pixel_stats(masks, maps, "pixel_auroc").auroc()


def pixel_ap(masks: Any, maps: Any) -> float:
    """Average precision over all pixels of all images (sklearn's definition)."""
    return _pixel_stats(masks, maps, "pixel_ap").ap()


def pixel_f1max(masks: Any, maps: Any) -> float:
    """F1-max over all pixels of all images."""
    return _pixel_stats(masks, maps, "pixel_f1max").f1max()


# --------------------------------------------------------------------------------------------
# AUPRO


def _check_max_fpr(max_fpr: float) -> float:
    try:
        max_fpr = float(max_fpr)
    except (TypeError, ValueError):
        raise S2SWError(f"max_fpr must be a number in (0, 1], got {max_fpr!r}") from None
    if not (0.0 < max_fpr <= 1.0):
        raise S2SWError(f"max_fpr must be in (0, 1], got {max_fpr}")
    return max_fpr


def aupro(masks: Any, maps: Any, max_fpr: float = 0.3, method: str = "exact") -> float:
    """Area under the per-region-overlap curve up to ``max_fpr``, normalised to [0, 1].

    ``method="exact"`` (default): MVTec AD definition over all distinct thresholds.
    ``method="grid200"``: the released S2SW code's 200-threshold computation with the FPR axis
    min-max rescaled (compare with published tables). See the module docstring for both.
    """
    max_fpr = _check_max_fpr(max_fpr)
    if method == "exact":
        return _aupro_exact(masks, maps, max_fpr)
    if method == "grid200":
        return _aupro_grid200(masks, maps, max_fpr)
    raise S2SWError(f"unknown AUPRO method {method!r}; choose one of {', '.join(AUPRO_METHODS)}")


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
    stride = max(1, xs.pixels // _SAMPLE_TARGET) | 1

    # pass A: one labelling per image; positive scores with their region; a strided sample of
    # negative scores
    pos_vals, pos_regs, samples = [], [], []
    n_regions = n_neg = 0
    for i, j in _chunks(xs, _CHUNK_PIXELS):
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
    areas = np.bincount(pr, minlength=n_regions).astype(np.float64)
    c = _crossing_count(n_neg, max_fpr)

    # lower bound for the negatives that can matter below max_fpr (verified below)
    v_lo, expected = None, n_neg
    if c <= n_neg and n_neg >= _SAMPLE_MIN_NEGATIVES:
        samp = np.concatenate(samples)
        q = c / n_neg
        r = int(math.ceil(q * samp.size + 6.0 * math.sqrt(samp.size * q * (1 - q)) + 16))
        if r < samp.size:
            v_lo = np.partition(samp, samp.size - r)[samp.size - r]
            share = np.count_nonzero(samp >= v_lo) / samp.size
            expected = min(n_neg, int(share * n_neg * 1.05) + 4096)
    del samples

    def collect(lo, capacity):
        # fill one buffer (grown only if the estimate was short): no concatenation copy
        buf, n = np.empty(capacity, dtype=dtype), 0
        for i, j in _chunks(xs, _CHUNK_PIXELS):
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

    negs = collect(v_lo, expected)
    if v_lo is not None and negs.size < c:  # the sample guessed too high: keep every negative
        del negs
        negs = collect(None, n_neg)
    negs.sort()

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


def _strict_upper(ths: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """For each threshold, the smallest value v of ``dtype`` with ``array([v]) > th`` true."""
    inf = dtype.type(np.inf)
    out = np.empty(ths.size, dtype=dtype)
    for t, th in enumerate(ths):
        c = np.array([th]).astype(dtype)
        while not (c > th)[0]:
            c = np.nextafter(c, inf)
        while True:
            p = np.nextafter(c, -inf)
            if (p > th)[0]:
                c = p
            else:
                break
        out[t] = c[0]
    return out


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
    ms, xs = _pair(masks, maps)
    dtype = xs.work_dtype
    lo = hi = None
    for i, j in _chunks(xs, _CHUNK_PIXELS):
        x = xs.values(i, j, dtype)
        cmin, cmax = x.min(), x.max()
        if not (np.isfinite(cmin) and np.isfinite(cmax)):
            raise S2SWError("maps contain NaN or infinite values; every score must be finite")
        lo = cmin if lo is None else min(lo, cmin)
        hi = cmax if hi is None else max(hi, cmax)
    min_th, max_th = dtype.type(lo), dtype.type(hi)
    if not max_th > min_th:
        raise UndefinedMetricError(
            "pixel_aupro (grid200) is undefined for constant maps: the 200-threshold grid is empty"
        )
    delta = (max_th - min_th) / max_step  # same scalar arithmetic as the released code
    ths = np.arange(min_th, max_th, delta)
    T = ths.size
    f = _strict_upper(ths, dtype)  # map > ths[t]  <=>  map >= f[t]
    grid = _Grid(f)

    neg_hist = np.zeros(T + 1, dtype=np.int64)
    region_hists, n_neg = [], 0
    for i, j in _chunks(xs, _CHUNK_PIXELS):
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


# --------------------------------------------------------------------------------------------
# curves (for figures) and the all-in-one entry point


def roc_points(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    """ROC curve (fpr, tpr) at every distinct threshold, starting at (0, 0)."""
    tps, fps, y = _curve_counts(labels, scores, "roc curve")
    return fps / fps[-1], tps / tps[-1]


def pr_points(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    """Precision-recall curve (recall, precision) at every distinct threshold, high to low."""
    tps, fps, y = _curve_counts(labels, scores, "precision-recall curve")
    tps, fps = tps[1:], fps[1:]
    return tps / tps[-1], tps / (tps + fps)


def _curve_counts(labels: Any, scores: Any, what: str):
    y, s = _image_inputs(labels, scores)
    _need_both(int(y.sum()), int((~y).sum()), what, "samples")
    order = np.argsort(-s.astype(np.float64), kind="stable")
    s, yy = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]
    tps = np.r_[0, np.cumsum(yy)[last]].astype(np.float64)
    fps = np.r_[0, (last + 1) - np.cumsum(yy)[last]].astype(np.float64)
    return tps, fps, y


def compute_metrics(
    labels: Any,
    scores: Any,
    masks: Any = None,
    maps: Any = None,
    aupro_method: str = "exact",
    pixel: bool = True,
) -> dict:
    """All seven metrics as a dict keyed by :data:`METRIC_KEYS` (values in [0, 1] or None).

    Image metrics use ``labels``/``scores``. Pixel metrics are computed when ``pixel`` is true
    and both ``masks`` and ``maps`` are given; otherwise the four pixel keys are present with
    value ``None``. A metric that is undefined for these inputs (see
    :class:`UndefinedMetricError`) is recorded as ``None`` and a ``UserWarning`` names it;
    invalid inputs still raise :class:`S2SWError`.
    """
    if aupro_method not in AUPRO_METHODS:
        raise S2SWError(
            f"unknown AUPRO method {aupro_method!r}; choose one of {', '.join(AUPRO_METHODS)}"
        )
    out: dict = {k: None for k in METRIC_KEYS}

    def undefined(keys, err):
        warnings.warn(f"{', '.join(keys)} recorded as None: {err}", UserWarning, stacklevel=3)

    keys = ("image_auroc", "image_ap", "image_f1max")
    try:
        st = _image_stats(labels, scores, "image metrics")
        out.update(image_auroc=st.auroc(), image_ap=st.ap(), image_f1max=st.f1max())
    except UndefinedMetricError as err:
        undefined(keys, err)

    if pixel and masks is not None and maps is not None:
        n_img = _to_numpy(scores).size
        n_maps = len(_Stack(maps, "maps"))
        if n_maps != n_img:
            raise S2SWError(f"{n_maps} maps for {n_img} image scores; they must match")
        keys = ("pixel_auroc", "pixel_ap", "pixel_f1max")
        try:
            st = _pixel_stats(masks, maps, "pixel metrics")
            out.update(pixel_auroc=st.auroc(), pixel_ap=st.ap(), pixel_f1max=st.f1max())
        except UndefinedMetricError as err:
            undefined(keys, err)
        try:
            out["pixel_aupro"] = aupro(masks, maps, method=aupro_method)
        except UndefinedMetricError as err:
            undefined(("pixel_aupro",), err)
    return out
