"""Public metrics API: ``from s2swclip.metrics import aupro, image_auroc, ...``.

Re-exports :mod:`s2swclip.eval.metrics`; see that package for the definitions and methods.
"""

from .eval.metrics import (  # noqa: F401
    AUPRO_METHODS,
    METRIC_KEYS,
    UndefinedMetricError,
    aupro,
    compute_metrics,
    image_ap,
    image_auroc,
    image_f1max,
    pixel_ap,
    pixel_auroc,
    pixel_f1max,
    pr_points,
    roc_points,
)

__all__ = [
    "AUPRO_METHODS",
    "METRIC_KEYS",
    "UndefinedMetricError",
    "aupro",
    "compute_metrics",
    "image_ap",
    "image_auroc",
    "image_f1max",
    "pixel_ap",
    "pixel_auroc",
    "pixel_f1max",
    "pr_points",
    "roc_points",
]
