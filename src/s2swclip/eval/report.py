"""Per-class and mean metric tables: a dict report, Markdown for the terminal, JSON and CSV files.

A report is a plain dict::

    {"dataset": "mvtec",
     "aupro_method": "exact",            # or "grid200" (paper-compatible)
     "classes": {"bottle": {"image_auroc": 0.91, ..., "pixel_aupro": 0.85}, ...},
     "mean":    {"image_auroc": 0.90, ..., "pixel_aupro": 0.84}}

Every class entry and the mean hold all seven keys of :data:`METRIC_KEYS`; a value is a float in
[0, 1] or ``None`` (not computed or undefined for that class). The mean of a metric is the plain
average over the classes where it is defined (``None`` when it is defined for none); Markdown marks
such partial means with ``*``. Undefined values print as ``n/a`` in Markdown, ``null`` in JSON and
an empty cell in CSV.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import warnings
from typing import Any, Mapping

from ..errors import S2SWError, first_line
from ..fileio import atomic_write_text
from .metrics import AUPRO_METHODS, METRIC_KEYS

__all__ = [
    "METRIC_KEYS",
    "AUPRO_DESCRIPTIONS",
    "build_report",
    "mean_metrics",
    "format_markdown",
    "write_report",
    "load_report",
    "to_csv",
]

AUPRO_DESCRIPTIONS = {
    "exact": "exact (MVTec AD definition: all thresholds, FPR <= 0.3, normalised)",
    "grid200": "grid200 (paper-compatible: 200 thresholds, FPR < 0.3 min-max rescaled)",
}

_SHORT = {
    "image_auroc": "I-AUROC",
    "image_ap": "I-AP",
    "image_f1max": "I-F1max",
    "pixel_auroc": "P-AUROC",
    "pixel_ap": "P-AP",
    "pixel_f1max": "P-F1max",
    "pixel_aupro": "P-AUPRO",
}


def _clean_value(value: Any, where: str) -> float | None:
    if value is None:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise S2SWError(f"{where}: metric value {value!r} is not a number") from None
    if math.isnan(v):
        warnings.warn(f"{where} is NaN; recorded as undefined (None)", UserWarning, stacklevel=4)
        return None
    if not (0.0 <= v <= 1.0):
        raise S2SWError(f"{where} = {v} is outside [0, 1]")
    return v


def _clean_metrics(metrics: Mapping[str, Any], where: str) -> dict:
    if not isinstance(metrics, Mapping):
        raise S2SWError(f"{where}: expected a dict of metrics, got {type(metrics).__name__}")
    unknown = sorted(set(metrics) - set(METRIC_KEYS))
    if unknown:
        raise S2SWError(f"{where}: unknown metric keys {unknown}; known: {', '.join(METRIC_KEYS)}")
    return {k: _clean_value(metrics.get(k), f"{where}.{k}") for k in METRIC_KEYS}


def mean_metrics(classes: Mapping[str, Mapping[str, Any]]) -> dict:
    """Average of each metric over the classes where it is defined (``None`` if none)."""
    out = {}
    for k in METRIC_KEYS:
        vals = [c[k] for c in classes.values() if c.get(k) is not None]
        out[k] = float(sum(vals) / len(vals)) if vals else None
    return out


def build_report(
    dataset: str,
    class_metrics: Mapping[str, Mapping[str, Any]],
    aupro_method: str = "exact",
) -> dict:
    """Report dict from ``{class: compute_metrics(...) result}`` (class order is kept)."""
    if aupro_method not in AUPRO_METHODS:
        raise S2SWError(
            f"unknown AUPRO method {aupro_method!r}; choose one of {', '.join(AUPRO_METHODS)}"
        )
    if not class_metrics:
        raise S2SWError(f"no classes to report for dataset {dataset!r}")
    classes = {str(c): _clean_metrics(m, f"{dataset}/{c}") for c, m in class_metrics.items()}
    return {
        "dataset": str(dataset),
        "aupro_method": aupro_method,
        "classes": classes,
        "mean": mean_metrics(classes),
    }


def _check_report(report: Mapping[str, Any]) -> None:
    for key in ("dataset", "aupro_method", "classes", "mean"):
        if key not in report:
            raise S2SWError(f"report has no {key!r} entry; build it with build_report()")


def format_markdown(report: Mapping[str, Any], percent: bool = True, decimals: int = 1) -> str:
    """Markdown table: one row per class, then the mean (values x100 when ``percent``)."""
    _check_report(report)
    mean = report["mean"]
    classes = report["classes"]
    partial = {
        k
        for k in METRIC_KEYS
        if mean.get(k) is not None and any(c.get(k) is None for c in classes.values())
    }

    def cell(v, star=False):
        if v is None:
            return "n/a"
        s = f"{v * 100:.{decimals}f}" if percent else f"{v:.{decimals + 2}f}"
        return s + ("*" if star else "")

    head = ["class"] + [_SHORT[k] for k in METRIC_KEYS]
    rows = [[str(c)] + [cell(m.get(k)) for k in METRIC_KEYS] for c, m in classes.items()]
    rows.append(["**mean**"] + [cell(mean.get(k), k in partial) for k in METRIC_KEYS])
    widths = [max(len(r[i]) for r in [head] + rows) for i in range(len(head))]

    def line(r):
        return (
            "| "
            + " | ".join(
                r[i].ljust(widths[i]) if i == 0 else r[i].rjust(widths[i]) for i in range(len(r))
            )
            + " |"
        )

    sep = "|" + "|".join(
        ("-" * (widths[i] + 2)) if i == 0 else ("-" * (widths[i] + 1) + ":")
        for i in range(len(head))
    ) + "|"
    method = report["aupro_method"]
    lines = [
        f"**{report['dataset']}** ({len(classes)} classes; "
        + ("values in %" if percent else "values in [0, 1]")
        + f"; AUPRO: {AUPRO_DESCRIPTIONS.get(method, method)})",
        "",
        line(head),
        sep,
    ]
    lines += [line(r) for r in rows]
    if partial:
        lines += ["", "\\* mean over the classes where the metric is defined"]
    return "\n".join(lines) + "\n"


def to_csv(report: Mapping[str, Any]) -> str:
    """CSV text: ``dataset,class,<7 metric keys>,aupro_method``; one row per class, then ``mean``."""
    _check_report(report)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["dataset", "class", *METRIC_KEYS, "aupro_method"])
    rows = list(report["classes"].items()) + [("mean", report["mean"])]
    for name, m in rows:
        vals = ["" if m.get(k) is None else repr(float(m[k])) for k in METRIC_KEYS]
        w.writerow([report["dataset"], name, *vals, report["aupro_method"]])
    return buf.getvalue()


def write_report(report: Mapping[str, Any], out_dir: str) -> dict:
    """Write ``report.json`` and ``report.csv`` into ``out_dir`` (created if needed), atomically.

    Returns ``{"json": path, "csv": path}``.
    """
    _check_report(report)
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as err:
        raise S2SWError(f"cannot create report directory {out_dir}: {first_line(err)}") from None
    paths = {"json": os.path.join(out_dir, "report.json"), "csv": os.path.join(out_dir, "report.csv")}
    try:
        atomic_write_text(paths["json"], json.dumps(report, indent=2, allow_nan=False) + "\n")
        atomic_write_text(paths["csv"], to_csv(report))
    except OSError as err:
        raise S2SWError(f"cannot write report into {out_dir}: {first_line(err)}") from None
    return paths


def load_report(path: str) -> dict:
    """Read a ``report.json`` written by :func:`write_report` (validated)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise S2SWError(f"report file not found: {path}") from None
    except (OSError, json.JSONDecodeError) as err:
        raise S2SWError(f"cannot read report {path}: {first_line(err)}") from None
    if not isinstance(data, dict):
        raise S2SWError(f"{path} is not a report (expected a JSON object)")
    _check_report(data)
    return build_report(data["dataset"], data["classes"], data["aupro_method"])
