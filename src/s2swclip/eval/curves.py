"""ROC and precision-recall curves of an evaluation, as PNG figures (``s2swclip test``)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..arrays import to_numpy
from ..viz.figures import new_figure, save_figure
from .metrics import image_ap, image_auroc, pr_points, roc_points

__all__ = ["save_curves"]

_MAX_CURVE_POINTS = 20000


def _thin(x: np.ndarray, y: np.ndarray):
    if x.size <= _MAX_CURVE_POINTS:
        return x, y
    idx = np.unique(np.linspace(0, x.size - 1, _MAX_CURVE_POINTS).round().astype(np.int64))
    return x[idx], y[idx]


def save_curves(labels: Any, scores: Any, path_prefix: str) -> tuple[str, str]:
    """Write ``<path_prefix>_roc.png`` and ``<path_prefix>_pr.png``; returns both paths.

    ``labels``/``scores`` are 1-D (image level), or flattened masks and maps for pixel curves.
    Raises :class:`s2swclip.errors.S2SWError` when only one class is present.
    """
    y = to_numpy(labels).reshape(-1)
    s = to_numpy(scores).reshape(-1)
    fpr, tpr = roc_points(y, s)
    rec, prec = pr_points(y, s)
    auroc, ap = image_auroc(y, s), image_ap(y, s)
    prevalence = float(np.mean(y.astype(bool)))
    prefix = os.fspath(path_prefix)
    out = []
    for kind in ("roc", "pr"):
        fig = new_figure(480, 480)
        ax = fig.add_axes((0.14, 0.12, 0.8, 0.78))
        if kind == "roc":
            ax.plot(*_thin(fpr, tpr), color="tab:red", lw=1.5, label=f"AUROC = {auroc:.4f}")
            ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
            ax.set_xlabel("false positive rate")
            ax.set_ylabel("true positive rate")
            ax.set_title("ROC curve")
        else:
            r, p = _thin(np.r_[0.0, rec], np.r_[prec[0], prec])
            ax.step(r, p, where="pre", color="tab:blue", lw=1.5, label=f"AP = {ap:.4f}")
            ax.axhline(prevalence, color="grey", lw=0.8, ls="--")
            ax.set_xlabel("recall")
            ax.set_ylabel("precision")
            ax.set_title("Precision-recall curve")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right" if kind == "roc" else "lower left")
        out.append(save_figure(fig, f"{prefix}_{kind}.png"))
    return out[0], out[1]
