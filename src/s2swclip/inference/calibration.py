"""Decision thresholds from known-good images: the split-conformal quantile.

With ``n`` calibration scores of normal images and a target false-positive rate ``F``, the
threshold is the ``k``-th smallest score with ``k = ceil((n + 1) * (1 - F))``; an image is flagged
when its score is ABOVE the threshold. If a new normal image is exchangeable with the calibration
images (same product, same capture), the probability that it is flagged is at most
``1 - k / (n + 1) <= F`` (Vovk et al.; Angelopoulos & Bates, "A Gentle Introduction to Conformal
Prediction"). When ``n`` is too small for ``F`` (``k > n``), no threshold can promise ``F``: the
largest score is used, the achieved bound ``1 / (n + 1)`` is reported, and a warning says how
many images ``F`` needs. Torch-free.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np

from ..errors import S2SWError

__all__ = ["Calibration", "calibrate_folder", "conformal_threshold"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Calibration:
    """A calibrated threshold and what it promises.

    Attributes:
        threshold: flag scores above this.
        n: number of calibration scores.
        fpr: the requested false-positive rate ``F``.
        rank: ``k``, the rank (1-based, ascending) of the score used as threshold.
        bound: the guaranteed bound on the expected false-positive rate, ``1 - k / (n + 1)``.
        flagged: calibration images above the threshold.
    """

    threshold: float
    n: int
    fpr: float
    rank: int
    bound: float
    flagged: int

    def describe(self) -> str:
        return (f"threshold {self.threshold:.6f} from {self.n} known-good images (rank {self.rank} of {self.n}): "
                f"expected false-positive rate on new good images <= {self.bound:.4f} (asked {self.fpr})")


def conformal_threshold(normal_scores: Iterable[float], fpr: float = 0.01) -> Calibration:
    """Split-conformal threshold for false-positive rate ``fpr`` (see the module docstring).

    Raises :class:`S2SWError` when there is no score or ``fpr`` is not in (0, 1).
    """
    if isinstance(fpr, bool) or not isinstance(fpr, (int, float)) or not 0.0 < float(fpr) < 1.0:
        raise S2SWError(f"fpr must be a number in (0, 1), got {fpr!r}", fields=["fpr"])
    s = np.sort(np.asarray(list(normal_scores), dtype=np.float64))
    if s.size == 0:
        raise S2SWError("calibration needs at least one known-good image that could be scored")
    if not np.isfinite(s).all():
        raise S2SWError("calibration scores contain NaN or infinite values")
    n = int(s.size)
    k = math.ceil((n + 1) * (1.0 - float(fpr)) - 1e-9)
    if k > n:
        need = math.ceil(1.0 / float(fpr) - 1.0 - 1e-9)
        log.warning("%d known-good images cannot guarantee a false-positive rate of %s (that needs at "
                    "least %d); using the largest score, which bounds it by %.4f", n, fpr, need, 1 / (n + 1))
        k = n
    threshold = float(s[k - 1])
    return Calibration(threshold, n, float(fpr), k, 1.0 - k / (n + 1), int((s > threshold).sum()))


def calibrate_folder(folder, fpr: float, score: Callable[[Sequence], Iterable[float | None]]) -> Calibration:
    """The conformal threshold of the known-good images of ``folder`` (listed as inputs are,
    :func:`~s2swclip.inference.inputs.collect_inputs`): ``score(entries)`` scores them (None for
    an image that could not be scored) -- every engine calibrates through here."""
    from .inputs import collect_inputs

    entries = collect_inputs([folder])
    cal = conformal_threshold([s for s in score(entries) if s is not None], fpr)
    log.info("calibrated %s", cal.describe())
    return cal
