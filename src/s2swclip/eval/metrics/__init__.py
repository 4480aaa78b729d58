"""Anomaly-detection metrics: image/pixel AUROC, AP, F1-max and AUPRO.

Methods (all exact; none uses a fixed grid of thresholds except ``aupro(method="grid200")``):

* :mod:`.ranking`: AUROC, AP and F1-max of image scores and of pixels, equal to scikit-learn's
  up to float rounding, from rank counts; ROC and precision-recall curve points for figures.
* :mod:`.pro`: AUPRO, exact (the MVTec AD definition, all thresholds) or ``grid200`` (the
  released code's 200-threshold variant, with the grid NumPy 1.x gave it).
* :mod:`.inputs`: the accepted input forms (arrays, tensors, sequences of images), validation,
  working precision and chunked reading.

Degenerate inputs never give a silent NaN: a metric that is undefined (only one class present, no
ground-truth region, constant maps for ``grid200``) raises :class:`UndefinedMetricError`, a subclass
of :class:`s2swclip.errors.S2SWError`; invalid inputs (shape mismatch, NaN/inf scores, non-binary
labels) raise ``S2SWError``. Well-defined corner cases keep their value: constant scores give
AUROC 0.5, AP = positive fraction P/(P+N), F1-max = 2P/(2P+N), exact AUPRO = ``max_fpr / 2``
(the curve jumps from (0, 0) to (1, 1), so the interpolated overlap at ``max_fpr`` is
``max_fpr``). :func:`compute_metrics` records ``None`` for undefined metrics and logs a warning.
"""

from __future__ import annotations

import logging
from typing import Any

from ...arrays import to_numpy
from ...errors import S2SWError
from . import pro, ranking
from .inputs import UndefinedMetricError, _Stack
from .pro import AUPRO_METHODS, aupro
from .ranking import (
    _image_stats,
    _pixel_stats,
    image_ap,
    image_auroc,
    image_f1max,
    pixel_ap,
    pixel_auroc,
    pixel_f1max,
    pr_points,
    roc_points,
)

log = logging.getLogger(__name__)

__all__ = ["METRIC_KEYS", "UndefinedMetricError", "compute_metrics", *ranking.__all__, *pro.__all__]

#: The keys of :func:`compute_metrics`' result, in order.
METRIC_KEYS = (
    "image_auroc",
    "image_ap",
    "image_f1max",
    "pixel_auroc",
    "pixel_ap",
    "pixel_f1max",
    "pixel_aupro",
)


def compute_metrics(
    labels: Any,
    scores: Any,
    masks: Any = None,
    maps: Any = None,
    aupro_method: str = "exact",
    pixel: bool = True,
    where: str | None = None,
) -> dict:
    """All seven metrics as a dict keyed by :data:`METRIC_KEYS` (values in [0, 1] or None).

    Image metrics use ``labels``/``scores``. Pixel metrics are computed when ``pixel`` is true
    and both ``masks`` and ``maps`` are given; otherwise the four pixel keys are present with
    value ``None``. A metric that is undefined for these inputs (see
    :class:`UndefinedMetricError`) is recorded as ``None`` and a warning naming it is logged
    (logger ``s2swclip.eval.metrics``), prefixed with ``where`` (e.g. ``"mvtec/bottle"``) when
    given; invalid inputs still raise :class:`S2SWError`.
    """
    if aupro_method not in AUPRO_METHODS:
        raise S2SWError(
            f"unknown AUPRO method {aupro_method!r}; choose one of {', '.join(AUPRO_METHODS)}"
        )
    out: dict = {k: None for k in METRIC_KEYS}

    def record(keys, compute):
        # compute() gives one value per key; an undefined metric stays None, with a warning
        try:
            out.update(zip(keys, compute()))
        except UndefinedMetricError as err:
            log.warning("%s%s recorded as None: %s", f"{where}: " if where else "", ", ".join(keys), err)

    def ranked(stats):
        return stats.auroc(), stats.ap(), stats.f1max()

    # METRIC_KEYS: the three image ranking metrics, the three pixel ones, AUPRO
    record(METRIC_KEYS[:3], lambda: ranked(_image_stats(labels, scores, "image metrics")))
    if pixel and masks is not None and maps is not None:
        n_img = to_numpy(scores).size
        n_maps = len(_Stack(maps, "maps"))
        if n_maps != n_img:
            raise S2SWError(f"{n_maps} maps for {n_img} image scores; they must match")
        record(METRIC_KEYS[3:6], lambda: ranked(_pixel_stats(masks, maps, "pixel metrics")))
        record(METRIC_KEYS[6:], lambda: [aupro(masks, maps, method=aupro_method)])
    return out
