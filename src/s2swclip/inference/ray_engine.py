"""Scale-out batch scoring on Ray Data: ``s2swclip predict --engine ray``.

The same inputs, decoder, scorer and rows as the local engine (:mod:`.local`), spread over a Ray
cluster (or this machine), resumable:

1. the driver lists the inputs (:func:`~.inputs.collect_inputs`: folders, globs, manifests,
   URIs), names them and decides their overlay files, exactly as the local engine does, and
   skips those whose rows are already committed in ``DIR/results/`` (resume);
2. Ray Data CPU tasks decode and preprocess (:class:`~.pipeline.Decoder`); an actor pool
   scores, each actor building its scorer once from a picklable :class:`~.spec.ScorerSpec`
   (``--workers N`` actors, ``--gpus-per-worker G`` GPUs each, ``--cpus-per-worker C`` CPUs);
   Ray Data's streaming executor bounds what is in flight (backpressure), so memory does not
   grow with the number of inputs;
3. rows stream back to the driver, which alone writes: every ``shard_rows`` rows (or
   ``flush_seconds``) it writes the overlays of those rows, then one Parquet shard, atomically.

Output folder: ``DIR/results/`` Parquet shards, ``DIR/overlays/`` (see :mod:`.shards`), and
``DIR/summary.json`` (counts) when a run completes. Rerunning the same command after a crash
(``kill -9`` of the driver at any moment) scores only inputs without a committed row and never
duplicates one. A run with different settings (model, threshold, calibration, overlays, pixel
limit) refuses a folder holding another run's rows. Inputs added since are scored by the rerun;
rows are never removed.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
from PIL import Image

from ..allocator import keep_freed_memory
from ..errors import S2SWError
from ..fileio import atomic_write_text, check_output_dir
from ..progress import progress as make_progress
from ..specs import RunOptions, SpecError
from ..viz.heatmap import standalone_scale
from .calibration import Calibration, calibrate_folder
from .inputs import InputEntry, collect_inputs, display_names
from .local import (RESULT_FIELDS, apply_listing_problem, in_refused_store, overlay_names, refused_stores,
                    result_row)
from .pipeline import Decoder, InferencePipeline, ScoredImage
from .ray_cluster import check_reachable, check_resources, data_context, ray_session, worker_error
from .shards import (OVERLAY_PNG, RESULTS, ResultsFolder, require_pyarrow, committed_paths, count_rows,
                     rows_in_flight_schema)
from .spec import ScorerSpec

__all__ = ["RayEngine", "RaySettings", "RaySummary", "predict_ray"]

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------ Ray stages
def _decode_batch(batch: dict[str, np.ndarray], *, image_size: int, max_pixels: int | None,
                  max_inflight_pixels: int, overlays: bool,
                  refused_stores: dict | None = None) -> dict[str, np.ndarray]:
    """CPU task: decode a batch of inputs. In: ``index, path, name, problem, overlay``; out: the
    same plus ``ok``, ``error``, ``error_code``, ``pixels`` [n, 3, S, S] float32 (zeros where not
    decoded) and, with overlays, ``preview`` (RGB bytes), ``preview_w``, ``preview_h``. URIs of
    ``refused_stores`` (the driver's :func:`~.local.refused_stores`) are not read."""
    dec = Decoder(image_size, max_pixels=max_pixels, max_inflight_pixels=max_inflight_pixels)
    dec.refused_stores = dict(refused_stores or {})
    n = len(batch["path"])
    pixels = np.zeros((n, 3, image_size, image_size), np.float32)
    ok = np.zeros(n, bool)
    error, code = np.full(n, "", object), np.full(n, "", object)
    preview = np.full(n, b"", object)
    pw, ph = np.zeros(n, np.int64), np.zeros(n, np.int64)
    for i in range(n):
        rec = dec.decode(str(batch["path"][i]), index=int(batch["index"][i]), name=str(batch["name"][i]))
        apply_listing_problem(rec, str(batch["problem"][i]) or None)
        if rec.decoded:
            ok[i], pixels[i] = True, rec.pixels
            if overlays:
                preview[i] = rec.preview.tobytes()
                pw[i], ph[i] = rec.preview.size
        else:
            error[i], code[i] = rec.error, rec.error_code or ""
        rec.release()
    out = dict(batch, ok=ok, error=error, error_code=code, pixels=pixels)
    if overlays:
        out.update(preview=preview, preview_w=pw, preview_h=ph)
    return out


class _ScoreWorker:
    """Actor: builds the scorer once, then scores decoded batches into result rows (a pyarrow
    Table with :data:`~.local.RESULT_FIELDS` and ``overlay_png``).

    A scorer that cannot be built (a user error, e.g. weights that cannot be had) is reported
    by the first batch, so that the driver gets the original error rather than an actor death.
    """

    def __init__(self, spec: ScorerSpec, threshold: float | None, overlays: bool, heatmap_scale: str = "fixed"):
        self.overlays, self.heatmap_scale = overlays, heatmap_scale
        self.failure: BaseException | None = None
        keep_freed_memory()  # a worker process of the run's own, as the command line's
        try:
            scorer = spec.build()
            if int(scorer.image_size) != spec.image_size():
                raise ValueError(f"scorer input size {scorer.image_size} != spec's {spec.image_size()}")
            self.pipe = InferencePipeline(scorer, batch_size=1, threshold=threshold)
        except Exception as exc:  # noqa: BLE001 - re-raised by __call__, with its type
            self.failure = exc

    def __call__(self, batch: dict[str, np.ndarray]):
        pa, _ = require_pyarrow()
        if self.failure is not None:
            raise self.failure
        n = len(batch["path"])
        recs: list[ScoredImage] = []
        for i in range(n):
            rec = ScoredImage(int(batch["index"][i]), str(batch["path"][i]), str(batch["name"][i]))
            if batch["ok"][i]:
                rec.pixels = batch["pixels"][i]
                if self.overlays:
                    rec.preview = Image.frombytes("RGB", (int(batch["preview_w"][i]), int(batch["preview_h"][i])),
                                                  batch["preview"][i])
            else:
                rec.error, rec.error_code = str(batch["error"][i]), str(batch["error_code"][i]) or None
            recs.append(rec)
        self.pipe.score_batch([r for r in recs if r.decoded])
        rows, pngs = [], []
        for i, rec in enumerate(recs):
            overlay = str(batch["overlay"][i]) or None if rec.error is None and self.overlays else None
            pngs.append(self._overlay(rec) if overlay is not None else None)
            rows.append(result_row(rec, overlay))
            rec.release()
        cols = {f: [r[f] for r in rows] for f in RESULT_FIELDS}
        cols[OVERLAY_PNG] = pngs
        return pa.Table.from_pydict(cols, schema=rows_in_flight_schema())

    def _overlay(self, rec: ScoredImage) -> bytes:
        """The overlay with its colour bar, on a scale decided for this image alone
        (:func:`~.heatmap.standalone_scale`)."""
        scale = standalone_scale(self.heatmap_scale, rec.anomaly_map, self.pipe.threshold,
                                 getattr(self.pipe.scorer, "map_scale", None))
        return self.pipe.overlay(rec, scale=scale, colorbar=True)


@dataclass(frozen=True)
class RaySettings:
    """Where and how wide a Ray run scores.

    Attributes:
        workers: scoring actors; ``gpus_per_worker`` / ``cpus_per_worker``: Ray resources of
            each (GPUs > 0: the workers run on CUDA; 0.5 puts two workers on a GPU).
        ray_address: a running cluster (``HOST:PORT``, ``ray://HOST:PORT``, ``auto``); None:
            a Ray already initialised by the calling program, else a local instance with
            ``local_cpus`` CPUs (default: all).
        shard_rows, flush_seconds: a shard is committed every ``shard_rows`` rows or
            ``flush_seconds`` seconds, whichever comes first (the work a crash can lose).
    """

    workers: int = 1
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    ray_address: str | None = None
    local_cpus: int | None = None
    shard_rows: int = 5000
    flush_seconds: float = 60.0

    def __post_init__(self) -> None:
        for name in ("workers", "shard_rows"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value or value < 1:
                raise SpecError(name, f"must be an integer >= 1, got {value!r}")
        if not (self.gpus_per_worker >= 0 and self.cpus_per_worker > 0):
            raise SpecError("gpus_per_worker", f"must be >= 0 and cpus_per_worker > 0, got "
                                               f"{self.gpus_per_worker!r}, {self.cpus_per_worker!r}")


@dataclass(frozen=True)
class _Job:
    """What the Ray stages need (picklable), shared by calibration and scoring."""

    spec: ScorerSpec
    options: RunOptions
    threshold: float | None
    workers: int
    cpus_per_worker: float
    gpus_per_worker: float
    block_rows: int
    refused_stores: tuple[tuple[str, str, str], ...] = ()  # (store, error_code, reason): not read

    @property
    def overlays(self) -> bool:
        return self.options.overlays

    @property
    def batch_size(self) -> int:
        return self.options.batch_size


def _decode_memory(job: _Job) -> int:
    """Memory a decoding task reserves (bytes): one full-resolution image at ~8 bytes a pixel
    (RGB and a converted copy; at most the per-image or in-flight pixel cap) and its output, a
    batch of float32 model inputs. Ray starts no more decoding tasks than memory allows, and,
    the resources differing from the actors', never fuses decoding into the scoring actors:
    decoding stays in CPU tasks that scale apart from them."""
    o = job.options
    pixels = min(o.max_pixels or o.max_inflight_pixels, o.max_inflight_pixels)
    s = job.spec.image_size()
    return int(pixels * 8 + job.batch_size * 3 * s * s * 4)


def _score_tables(ray, job: _Job, planned) -> Iterator:
    """Run the Ray pipeline over ``planned`` (a pyarrow Table: index, path, name, problem,
    overlay); yields pyarrow Tables of worker rows as they complete (any order)."""
    from ray.data import ActorPoolStrategy

    pa, _ = require_pyarrow()
    # copies (take), not slices: a pickled slice would carry the whole table's buffers
    blocks = [planned.take(pa.array(range(i, min(i + job.block_rows, planned.num_rows))))
              for i in range(0, planned.num_rows, job.block_rows)]
    ds = ray.data.from_arrow(blocks)
    ds = ds.map_batches(_decode_batch, batch_size=job.batch_size, batch_format="numpy",
                        num_cpus=1, memory=_decode_memory(job),
                        fn_kwargs={"image_size": job.spec.image_size(), "max_pixels": job.options.max_pixels,
                                   "max_inflight_pixels": job.options.max_inflight_pixels,
                                   "overlays": job.overlays,
                                   "refused_stores": {s: (c, r) for s, c, r in job.refused_stores}})
    ds = ds.map_batches(_ScoreWorker, batch_size=job.batch_size, batch_format="numpy",
                        compute=ActorPoolStrategy(size=job.workers), num_cpus=job.cpus_per_worker,
                        num_gpus=job.gpus_per_worker or None,
                        fn_constructor_kwargs={"spec": job.spec, "threshold": job.threshold,
                                               "overlays": job.overlays,
                                               "heatmap_scale": job.options.heatmap_scale})
    try:
        yield from ds.iter_batches(batch_size=None, batch_format="pyarrow")
    except Exception as exc:
        err = worker_error(exc)
        if err is None:
            raise
        raise err from None


def _plan(entries: Sequence[InputEntry], names: Sequence[str], overlays: Sequence[str] | None, keep):
    """The inputs to score as a pyarrow Table (``index``, ``path``, ``name``, ``problem``,
    ``overlay``; empty strings for none), those for which ``keep(path)`` holds."""
    pa, _ = require_pyarrow()
    idx = [i for i, e in enumerate(entries) if keep(e.path)]
    return pa.table({"index": pa.array(idx, pa.int64()),
                     "path": pa.array([entries[i].path for i in idx], pa.string()),
                     "name": pa.array([names[i] for i in idx], pa.string()),
                     "problem": pa.array([entries[i].problem or "" for i in idx], pa.string()),
                     "overlay": pa.array([overlays[i] if overlays else "" for i in idx], pa.string())})


def _calibrate(ray, job: _Job) -> Calibration:
    """Score the known-good images of the calibration folder on Ray: their conformal threshold."""
    def score(entries):
        planned = _plan(entries, display_names([e.path for e in entries]), None, lambda p: True)
        job_ = dataclasses.replace(job, options=job.options.replace(overlays=False), threshold=None)
        for t in _score_tables(ray, job_, planned):
            yield from t.column("score").to_pylist()

    return calibrate_folder(job.options.calibrate_dir, job.options.fpr, score)


# ------------------------------------------------------------------------------------------ run
@dataclass
class RaySummary:
    """What a Ray run did. Counts are over every row in the output folder (this run's and the
    runs it resumed); ``n_new`` rows were committed by this run."""

    threshold: float | None
    calibration: Calibration | None
    n_scored: int
    n_failed: int
    n_new: int
    n_already_done: int
    results_dir: Path

    def to_dict(self) -> dict[str, Any]:
        return {"engine": "ray", "threshold": self.threshold,
                "calibration": None if self.calibration is None else vars(self.calibration),
                "n_scored": self.n_scored, "n_failed": self.n_failed, "n_rows": self.n_scored + self.n_failed,
                "n_new": self.n_new, "n_already_done": self.n_already_done, "results": RESULTS}


def _worker_spec(spec: ScorerSpec, gpus: float) -> ScorerSpec:
    """The spec the workers build: on CUDA exactly when they get GPUs (Ray assigns them, so a
    worker's device is plain ``cuda``)."""
    device = str(spec.device)
    if gpus > 0:
        if device.startswith("cuda:"):
            raise S2SWError(f"device {device}: Ray assigns each worker its GPUs, gpus_per_worker; "
                            f"use device cuda", fields=["device", "gpus_per_worker", "device"])
        return spec.replace(device="cuda")
    if device != "cpu":
        raise S2SWError(f"device {device} with the Ray engine: give the workers GPUs with gpus_per_worker, "
                        f"e.g. 1, or 0.5 for two workers per GPU", fields=["device", "gpus_per_worker"])
    return spec


def _run_settings(spec: ScorerSpec, o: RunOptions) -> dict[str, Any]:
    """What the rows of a run depend on (JSON-safe): a folder holding rows of other settings, or
    of other model inputs (``digests``: the content of the prompts, weights, references...), is
    refused (:class:`~.shards.ResultsFolder`)."""
    return {"scorer": {k: v for k, v in spec.describe().items() if k != "device"}, "digests": spec.digests(),
            "threshold": o.threshold, "overlays": bool(o.overlays), "max_pixels": o.max_pixels,
            "heatmap_scale": o.heatmap_scale if o.overlays else None,
            "calibrate": None if o.calibrate_dir is None else os.path.abspath(o.calibrate_dir),
            "fpr": None if o.calibrate_dir is None else float(o.fpr)}


class RayEngine:
    """The Ray engine (:class:`~.engine.Engine`): scores on Ray Data, each worker building its
    scorer from ``spec`` (:meth:`~.spec.ScorerSpec.detector`, :meth:`~.spec.ScorerSpec.exported`),
    and commits one row per input to Parquet shards under ``out_dir/results`` (see the module
    docstring); resumes a run interrupted in ``out_dir``."""

    def __init__(self, spec: ScorerSpec, settings: RaySettings = RaySettings()):
        self.spec = _worker_spec(spec, settings.gpus_per_worker)
        self.settings = settings

    def run(self, inputs: Sequence[str | os.PathLike], out_dir: str | os.PathLike,
            options: RunOptions = RunOptions()) -> RaySummary:
        """Score ``inputs`` (files, folders, globs, manifests; local paths or URIs). Options as in
        :class:`~.local.LocalEngine` (calibration images are scored on Ray too), except that
        ``heatmap_scale="fixed"`` without a threshold spans the whole [0, 1] (workers colour each
        image on its own, see :func:`~s2swclip.viz.heatmap.standalone_scale`): with a threshold
        the overlays equal the local engine's. Returns :class:`RaySummary`."""
        o, rs = options, self.settings
        require_pyarrow()
        out = check_output_dir(out_dir)
        entries = collect_inputs(inputs)
        if o.calibrate_dir is not None:
            collect_inputs([o.calibrate_dir])
        self.spec.check()
        if rs.ray_address is not None:  # before anything is written
            check_reachable(rs.ray_address)
        names = display_names([e.path for e in entries])
        overlay_files = overlay_names(names) if o.overlays else None
        with ResultsFolder(out, _run_settings(self.spec, o)) as output:
            record = output.record()
            done = committed_paths(out)
            planned = _plan(entries, names, overlay_files, lambda p: p not in done)
            n_already = len(entries) - planned.num_rows
            calibration = None
            if record is not None and record.get("calibration") is not None:
                calibration = Calibration(**record["calibration"])
            thr = calibration.threshold if calibration is not None else o.threshold
            # rows reach the driver one input block at a time: blocks of a few batches, at most a shard
            block_rows = max(o.batch_size, min(4 * o.batch_size, int(rs.shard_rows)))
            refused = refused_stores([entries[i].path for i in planned.column("index").to_pylist()])
            job = _Job(self.spec, o, thr, int(rs.workers), float(rs.cpus_per_worker), float(rs.gpus_per_worker),
                       block_rows, tuple((s, c, r) for s, (c, r) in refused.items()))
            n_new = 0
            if planned.num_rows or record is None:
                if n_already:
                    log.info("resuming: %d of %d inputs already have rows in %s", n_already, len(entries),
                             output.results)
                calibration, n_new = self._score(job, planned, output, record is None, calibration)
                thr = calibration.threshold if calibration is not None else thr
            summary = RaySummary(thr, calibration, *count_rows(out), n_new, n_already, out / RESULTS)
        atomic_write_text(out / "summary.json", json.dumps(summary.to_dict(), indent=2, allow_nan=False))
        return summary

    def _score(self, job: _Job, planned, output: ResultsFolder, new_record: bool,
               calibration: Calibration | None) -> tuple[Calibration | None, int]:
        """On Ray: calibrate (unless a resumed run recorded it), record the run, score the
        planned inputs. Returns the calibration and the rows committed."""
        rs = self.settings
        n_new = 0
        with ray_session(rs.ray_address, rs.local_cpus) as (ray, owned_local), data_context():
            check_resources(ray, owned_local, job.workers, job.cpus_per_worker, job.gpus_per_worker)
            if job.options.calibrate_dir is not None and calibration is None:
                calibration = _calibrate(ray, job)
                job = dataclasses.replace(job, threshold=calibration.threshold)
            if new_record:
                output.write_record(job.threshold, calibration)
            if planned.num_rows:
                n_new = _run(ray, job, planned, output, int(rs.shard_rows), float(rs.flush_seconds),
                             job.options.progress)
        return calibration, n_new


_RAY_FIELDS = frozenset(RaySettings.__dataclass_fields__)


def predict_ray(spec: ScorerSpec, inputs: Sequence[str | os.PathLike], out_dir: str | os.PathLike,
                **options: Any) -> RaySummary:
    """``RayEngine(spec, RaySettings(...)).run(inputs, out_dir, RunOptions(...))``: ``options``
    are the fields of :class:`RaySettings` and of :class:`~s2swclip.specs.RunOptions`."""
    ray_options = {k: options.pop(k) for k in list(options) if k in _RAY_FIELDS}
    run_options = RunOptions(**options)
    return RayEngine(spec, RaySettings(**ray_options)).run(inputs, out_dir, run_options)


def _run(ray, job: _Job, planned, output: ResultsFolder, shard_rows: int, flush_seconds: float,
         progress: bool) -> int:
    """Score the planned inputs and commit their rows; returns the rows committed. Rows already
    scored when the run stops (an interrupt, a failing worker) are committed before it ends."""
    bar = make_progress(planned.num_rows, "scoring on Ray", enabled=progress)
    pending: list = []
    n_pending = committed = 0
    seen: set[str] = set()
    last = time.monotonic()
    writing = False

    def flush() -> None:
        nonlocal pending, n_pending, committed, last, writing
        writing = True
        committed += output.commit(pending)
        pending, n_pending, last, writing = [], 0, time.monotonic(), False

    try:
        for table in _score_tables(ray, job, planned):
            keep = [p not in seen for p in table.column("path").to_pylist()]
            if not all(keep):  # never expected (Ray Data delivers each block once): never a duplicate row
                log.warning("dropped %d repeated row(s)", keep.count(False))
                table = table.filter(require_pyarrow()[0].array(keep))
            seen.update(table.column("path").to_pylist())
            refused = {s: (c, r) for s, c, r in job.refused_stores}  # reported once, by the driver
            for path, name, err in zip(table.column("path").to_pylist(), table.column("name").to_pylist(),
                                       table.column("error").to_pylist()):
                if err is not None and not in_refused_store(path, refused):
                    log.warning("skipped %s: %s", name, err)
            pending.append(table)
            n_pending += table.num_rows
            bar.update(table.num_rows)
            if n_pending >= shard_rows or time.monotonic() - last >= flush_seconds:
                flush()
        if pending:
            flush()
    except BaseException:
        if pending and not writing:
            flush()
        raise
    finally:
        bar.close()
    return committed
