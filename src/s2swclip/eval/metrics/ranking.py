"""Ranking metrics: AUROC, average precision and F1-max of image scores and of pixels, and the
ROC / precision-recall curves for figures.

All are exact (no grid of thresholds) and follow scikit-learn's ``roc_auc_score``,
``average_precision_score`` and ``precision_recall_curve`` (ties included) up to float rounding.
They are computed from ranks: the positive scores are sorted and made unique, and for every
distinct positive value ``u`` the number of negatives below ``u`` and equal to ``u`` is counted by
sorting the negatives (a chunk of at most 16M pixels at a time) and binary-searching the positive
values in each sorted chunk. With ``P`` positives and ``N`` negatives:

* AUROC is the Mann-Whitney statistic ``sum_u n_pos(u) * (#neg<u + #neg==u / 2) / (P*N)`` (equal
  to the trapezoid area under the ROC curve);
* AP is ``sum_u n_pos(u)/P * precision(u)``;
* F1-max is the largest ``2TP / (2TP + FP + FN)`` over the distinct thresholds (the maximum is
  always reached at a threshold equal to some positive score).

Memory: the positive pixels plus one chunk; time: one sort of all pixels in pieces, no float64
copy of the maps.

A metric needs both classes: with only normal or only anomalous images/pixels it raises
:class:`~.inputs.UndefinedMetricError`. Constant scores are well defined and keep their value:
AUROC 0.5, AP = positive fraction ``P/(P+N)``, F1-max ``2P/(2P+N)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .inputs import UndefinedMetricError, _check_finite, _chunks, _image_inputs, _pair

__all__ = [
    "image_auroc", "image_ap", "image_f1max", "pixel_auroc", "pixel_ap", "pixel_f1max",
    "roc_points", "pr_points",
]

# Negative pixels sorted per chunk when counting ranks.
_SORT_CHUNK_PIXELS = 1 << 24


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
    for i, j in _chunks(xs):
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
# curves (for figures)


def roc_points(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    """ROC curve (fpr, tpr) at every distinct threshold, starting at (0, 0)."""
    tps, fps = _curve_counts(labels, scores, "roc curve")
    return fps / fps[-1], tps / tps[-1]


def pr_points(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    """Precision-recall curve (recall, precision) at every distinct threshold, high to low."""
    tps, fps = _curve_counts(labels, scores, "precision-recall curve")
    tps, fps = tps[1:], fps[1:]
    return tps / tps[-1], tps / (tps + fps)


def _curve_counts(labels: Any, scores: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Counts of true and false positives, each [K+1]: 0, then with each of the K distinct scores
    (high to low) as the threshold (score >= threshold is positive)."""
    y, s = _image_inputs(labels, scores)
    _need_both(int(y.sum()), int((~y).sum()), what, "samples")
    order = np.argsort(-s.astype(np.float64), kind="stable")
    s, yy = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]
    tps = np.r_[0, np.cumsum(yy)[last]].astype(np.float64)
    fps = np.r_[0, (last + 1) - np.cumsum(yy)[last]].astype(np.float64)
    return tps, fps
