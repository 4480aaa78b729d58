"""The local engine of ``s2swclip predict``: score files on this machine, write the results.

Inputs (files, folders, globs, manifests; see :mod:`.inputs`) go through the :mod:`.pipeline`;
the output folder gets ``results.csv``, ``results.json`` and ``overlays/*.png`` (one per scored
image, named after its input, with its colour bar; coloured on one scale for the run, see
:mod:`.heatmap`; ``results.json`` records the scale). Unreadable inputs are rows with an
``error``; they never stop the run (a URI whose store cannot be used either: its store is
tried once per run, see :func:`refused_stores`). Every file is written atomically. Torch-free: the scorer
decides what runs the model.

The row of an input (:data:`RESULT_FIELDS`, the same in every engine: ``results.csv``/``.json``
here, the Parquet shards of :mod:`.ray_engine`):

==================  ==========================================================================
``path``            the input as listed: an absolute path or a URI
``name``            relative to the inputs' common folder (``crack/000.png``)
``score``           image anomaly score in [0, 1]; empty when not scored
``anomalous``       ``score > threshold`` when a threshold is given or calibrated, else empty
``map_max``         largest value of the anomaly map (the map's own scale, [0, map_scale]: the
                    zero-shot map sums one anomaly probability per feature layer; see the
                    detector's ``map_scale`` for the few-shot mode)
``map_mean``        mean of the anomaly map (same scale)
``map_frac_above``  fraction of the map's pixels whose value / map_scale (on the score's [0, 1]
                    scale) is above the threshold: the share of the image flagged at the
                    image's operating point; empty without a threshold
``overlay``         the overlay PNG, relative to the output folder; empty when not written
``error``           why the input was not scored (one line); empty when scored
``error_code``      ``missing``, ``unreadable``, ``empty``, ``not_an_image``,
                    ``too_many_pixels``, ``corrupt``, ``unsupported_uri``; empty when scored
==================  ==========================================================================
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..fileio import atomic_write_bytes, check_output_dir
from ..progress import progress as make_progress
from ..specs import RunOptions
from ..viz.heatmap import OverlayPainter
from .calibration import Calibration, calibrate_folder
from .inputs import collect_inputs, display_names
from .pipeline import InferencePipeline, ScoredImage, overlay_png
from .uris import is_uri, store_of, unreachable_stores

__all__ = ["RESULT_FIELDS", "LocalEngine", "PredictSummary", "apply_listing_problem", "csv_safe", "in_refused_store",
           "overlay_names", "predict_files", "refused_stores", "result_row"]

log = logging.getLogger(__name__)

#: Columns of ``results.csv`` (and keys of each ``results.json`` row), in order.
RESULT_FIELDS = ("path", "name", "score", "anomalous", "map_max", "map_mean", "map_frac_above", "overlay",
                 "error", "error_code")


@dataclass
class PredictSummary:
    """What ``predict`` did: the threshold used, its calibration, and one row per input."""

    threshold: float | None
    calibration: Calibration | None
    rows: list[dict[str, Any]] = field(default_factory=list)
    heatmap: dict[str, Any] | None = None  # the overlays' colour scale (HeatmapScale.to_dict())

    @property
    def n_scored(self) -> int:
        return sum(r["error"] is None for r in self.rows)

    @property
    def n_failed(self) -> int:
        return sum(r["error"] is not None for r in self.rows)

    def to_dict(self) -> dict[str, Any]:
        cal = None if self.calibration is None else vars(self.calibration)
        return {"threshold": self.threshold, "calibration": cal, "heatmap": self.heatmap,
                "n_scored": self.n_scored, "n_failed": self.n_failed, "results": self.rows}


def csv_safe(value: Any) -> Any:
    """A text cell that a spreadsheet would run as a formula (``=``, ``+``, ``-``, ``@``, tab,
    CR first) gets a leading apostrophe, as the web page's CSV export does."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def result_row(rec: ScoredImage, overlay: str | None = None) -> dict[str, Any]:
    """The row of one record (the same in every engine's output)."""
    return {"path": rec.source, "name": rec.name, "score": rec.score, "anomalous": rec.anomalous,
            "map_max": rec.map_max, "map_mean": rec.map_mean, "map_frac_above": rec.map_frac_above,
            "overlay": overlay, "error": rec.error, "error_code": rec.error_code}


def apply_listing_problem(rec: ScoredImage, problem: str | None) -> None:
    """A file that could not be decoded, whose listing already told why (a broken link, an
    unreadable folder), reports the listing's reason (code ``unreadable``)."""
    if problem is not None and rec.error is not None:
        rec.error, rec.error_code = problem, "unreadable"


def overlay_names(names: Sequence[str]) -> list[str]:
    """The overlay file of each input (``overlays/<flat name>.png``, relative to the output
    folder), in input order: flat, sanitised and unique, decided for every input up front so
    that every engine, and every resumed run, gives an input the same name."""
    used: set[str] = set()
    return [str(Path("overlays") / _overlay_name(n, used)) for n in names]


def _overlay_name(display: str, used: set[str]) -> str:
    """A flat, sanitised, unique PNG file name for an input shown as ``display``."""
    stem = str(Path(display).with_suffix("")).replace(os.sep, "__")
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in stem)[-120:].lstrip(".") or "image"
    name, k = f"{stem}.png", 1
    while name in used:
        k += 1
        name = f"{stem}_{k}.png"
    used.add(name)
    return name


class LocalEngine:
    """The local engine (:class:`~.engine.Engine`): scores in this process with ``scorer`` (a
    :class:`~s2swclip.inference.pipeline.Scorer`; see :func:`~s2swclip.inference.scorers.as_scorer`
    for a detector) and writes ``results.csv``, ``results.json`` and ``overlays/*.png``."""

    def __init__(self, scorer):
        self.scorer = scorer

    def run(self, inputs: Sequence[str | os.PathLike], out_dir: str | os.PathLike,
            options: RunOptions = RunOptions()) -> PredictSummary:
        """Score ``inputs`` (files, folders, globs) into ``out_dir`` (checked before any work);
        see :class:`~s2swclip.specs.RunOptions` for the options. Returns :class:`PredictSummary`."""
        o = options
        out = check_output_dir(out_dir)
        entries = collect_inputs(inputs)
        pipe = InferencePipeline(self.scorer, batch_size=o.batch_size, threshold=o.threshold,
                                 max_pixels=o.max_pixels, max_inflight_pixels=o.max_inflight_pixels,
                                 decode_workers=o.decode_workers, model_streams=o.model_streams)
        pipe.decoder.refused_stores = refused_stores([e.path for e in entries])
        cal = None
        if o.calibrate_dir is not None:
            cal = calibrate_folder(o.calibrate_dir, o.fpr, lambda found: (
                r.score for r in pipe.run(_sources([e.path for e in found]))))
            pipe.threshold = cal.threshold
        summary = PredictSummary(pipe.threshold, cal)
        painter = OverlayPainter(o.heatmap_scale, pipe.threshold, getattr(self.scorer, "map_scale", None),
                                 draw=lambda preview, amap, scale: overlay_png(preview, amap, scale=scale,
                                                                               colorbar=True),
                                 write=atomic_write_bytes, window=o.scale_window, submit=pipe.submit)
        bar = make_progress(len(entries), "scoring", enabled=o.progress)
        names = display_names([e.path for e in entries])
        overlay_files = overlay_names(names)
        try:
            for rec in pipe.run([(e.path, name) for e, name in zip(entries, names)], progress=bar):
                apply_listing_problem(rec, entries[rec.index].problem)
                overlay = None
                if rec.error is not None:
                    if not in_refused_store(rec.source, pipe.decoder.refused_stores):
                        log.warning("skipped %s: %s", rec.name, rec.error)
                elif o.overlays:
                    overlay = overlay_files[rec.index]
                    painter.add(rec.preview, rec.anomaly_map, out / overlay)
                summary.rows.append(result_row(rec, overlay))
                rec.release()
            painter.flush()
            pipe.drain()  # the overlays drawn and written on the worker threads
        finally:
            bar.close()
            pipe.close()
        summary.heatmap = painter.describe() if o.overlays else None
        _write_results(out, summary)
        return summary


def _sources(paths: Sequence[str]):
    return [(p, n) for p, n in zip(paths, display_names(paths))]


def refused_stores(paths: Sequence[str]) -> dict[str, tuple[str, str]]:
    """The stores of a run's URIs that cannot be used, as ``{store: (error_code, reason)}`` for
    :attr:`~.pipeline.Decoder.refused_stores`: tried once per run, one warning each (see
    :func:`~.uris.unreachable_stores`); their entries become rows with that error."""
    return {store: (err.code, str(err)) for store, err in unreachable_stores(paths).items()}


def in_refused_store(path: str, refused: dict[str, tuple[str, str]]) -> bool:
    """True for a URI of a store in ``refused`` (its rows were reported by one warning already)."""
    return is_uri(path) and store_of(path) in refused


def calibrate(pipeline: InferencePipeline, folder: str | os.PathLike, fpr: float) -> Calibration:
    """Score the known-good images of ``folder`` with ``pipeline`` and return the conformal
    threshold (``s2swclip watch`` calibrates its own pipeline)."""
    return calibrate_folder(folder, fpr, lambda found: (r.score for r in pipeline.run(_sources([e.path for e in found]))))


def predict_files(scorer, inputs: Sequence[str | os.PathLike], out_dir: str | os.PathLike,
                  **options: Any) -> PredictSummary:
    """``LocalEngine(scorer).run(inputs, out_dir, RunOptions(**options))``: score ``inputs`` and
    write ``results.csv``, ``results.json`` and ``overlays/*.png`` (``options``: the fields of
    :class:`~s2swclip.specs.RunOptions`)."""
    return LocalEngine(scorer).run(inputs, out_dir, RunOptions(**options))


def _write_results(out: Path, summary: PredictSummary) -> None:
    atomic_write_bytes(out / "results.json", json.dumps(summary.to_dict(), indent=2, allow_nan=False).encode())
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(RESULT_FIELDS), lineterminator="\n")
    writer.writeheader()
    for row in summary.rows:
        writer.writerow({k: csv_safe(v) for k, v in row.items()})
    atomic_write_bytes(out / "results.csv", buf.getvalue().encode())
