"""The one inference pipeline: decode -> preprocess -> batch -> score -> :class:`ScoredImage`.

``s2swclip predict`` (files), the web service (uploads) and the Ray engine all run images
through this module, so they decode, reduce, score, threshold and draw overlays the same way
and report the same record. It imports NumPy and Pillow only: what scores a batch is a
:class:`Scorer` (the PyTorch detector through :class:`~s2swclip.inference.scorers.DetectorScorer`,
or an exported model of the torch-free runtime).

Memory is bounded by design: each image is reduced to the model input and a small preview right
after decoding (:func:`~s2swclip.data.images.decode_for_model`), the decoded full-resolution
pixels held at once are capped by a :class:`~s2swclip.data.images.PixelBudget` shared by all
threads, and :meth:`InferencePipeline.run` decodes at most ``lookahead`` images ahead.

Throughput: decoding and preprocessing run on a bounded pool of worker threads (Pillow releases
the GIL while it decodes, resizes and encodes) ahead of the model, and the work that follows
scoring (drawing and writing overlays) is handed to the same pool with :meth:`InferencePipeline.submit`,
so both overlap the scorer's calls instead of running between them. The pool's threads are the
only extra CPU users: size the model's own threads to the cores they leave (the command line's
``--threads``).
"""

from __future__ import annotations

import io
import os
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Iterable, Iterator, Protocol, Sequence

import numpy as np
from PIL import Image

from ..specs import DEFAULT_MAX_INFLIGHT_PIXELS, DEFAULT_MAX_PIXELS
from .decoding import Decoder, read_file_bytes
from .records import ScoredImage, map_fraction_above

__all__ = ["DEFAULT_MAX_INFLIGHT_PIXELS", "DEFAULT_MAX_PIXELS", "Decoder", "InferencePipeline", "ScoredImage",
           "Scorer", "available_cores", "default_model_streams", "default_workers", "map_fraction_above", "overlay_png",
           "read_file_bytes"]


class Scorer(Protocol):
    """Scores batches of model inputs.

    Attributes:
        image_size: S, the input side it expects.
        map_scale: the maps' upper bound, so that ``map / map_scale`` is on the scores' [0, 1]
            scale (the detector's ``map_scale``: the zero-shot map sums one anomaly probability
            per feature layer). Optional: without it ``map_frac_above`` stays empty.
    """

    image_size: int
    map_scale: float

    def score(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``pixels`` float32 [B, 3, S, S] CLIP-normalised -> (scores [B], maps [B, S, S])."""

    def describe(self) -> dict[str, Any]:
        """What is loaded (backbone, weights, prompts, precision, device, ...), JSON-safe."""


def overlay_png(preview: Image.Image, amap: np.ndarray, *, vmin: float | None = None,
                vmax: float | None = None, alpha: float = 0.5, scale=None, colorbar: bool = False) -> bytes:
    """Heat-map overlay PNG at the preview's size and aspect ratio.

    The detector scores the image squashed to S x S; the map [S, S] is stretched back to the
    preview's proportions (bilinear) so that it lines up with the original. Colours span
    ``vmin..vmax`` (default: this map's own range) or, given, the
    :class:`~s2swclip.viz.heatmap.HeatmapScale` ``scale``; with ``colorbar`` (and a
    ``scale``) the colour bar with its values is added below the image (the PNG is then
    :data:`~s2swclip.viz.heatmap.COLORBAR_HEIGHT` pixels taller).
    """
    from ..viz.figures import heatmap_overlay

    if scale is not None:
        vmin, vmax = scale.vmin, scale.vmax
    w, h = preview.size
    m = np.asarray(amap, dtype=np.float32)
    if m.shape != (h, w):
        m = np.asarray(Image.fromarray(m, mode="F").resize((w, h), Image.BILINEAR))
    image = Image.fromarray(heatmap_overlay(np.asarray(preview.convert("RGB")), m, alpha, vmin=vmin, vmax=vmax))
    if colorbar and scale is not None:
        from ..viz.heatmap import COLORBAR_HEIGHT, colorbar_image

        framed = Image.new("RGB", (w, h + COLORBAR_HEIGHT), (255, 255, 255))
        framed.paste(image, (0, 0))
        framed.paste(colorbar_image(w, scale), (0, h))
        image = framed
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1)  # 26 ms instead of 35 at 518 px, 5 % larger
    return buf.getvalue()


class InferencePipeline:
    """Decode, batch and score images with a :class:`Scorer`.

    Args:
        scorer: what scores batches (its ``image_size`` is the model input side).
        batch_size: images per scorer call in :meth:`run`.
        threshold: decision threshold (``anomalous = score > threshold``); None: no decision.
        max_pixels: refuse images with more pixels (from the header, before decoding).
        max_inflight_pixels: decoded full-resolution pixels held at once by all threads.
        preview_side: longest side of the overlay previews (default: the model size).
        decode_workers: worker threads decoding ahead in :meth:`run` and running the jobs of
            :meth:`submit` (default :func:`default_workers`); created on first use, kept until
            :meth:`close`.
        max_pending_jobs: jobs of :meth:`submit` queued or running at once (more waits).
        model_streams: batches the scorer works on at once in :meth:`run` (default
            :func:`default_model_streams`): with more than one, each batch is scored on a thread
            of its own while this one decodes and yields, so that a model whose calls use one
            core each (PyTorch with ``--threads 1``, the default on two cores) uses them all.
            Its memory for activations grows in proportion; results still come in input order.
    """

    def __init__(self, scorer: Scorer, *, batch_size: int = 8, threshold: float | None = None,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS,
                 max_inflight_pixels: int = DEFAULT_MAX_INFLIGHT_PIXELS,
                 preview_side: int | None = None, decode_workers: int | None = None,
                 max_pending_jobs: int | None = None, model_streams: int | None = None):
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.scorer = scorer
        self.image_size = int(scorer.image_size)
        self.map_scale = getattr(scorer, "map_scale", None)
        self.batch_size = int(batch_size)
        self.threshold = threshold
        self.decoder = Decoder(self.image_size, max_pixels=max_pixels, max_inflight_pixels=max_inflight_pixels,
                               preview_side=preview_side)
        self.max_pixels = max_pixels
        self.budget = self.decoder.budget
        self.preview_side = self.decoder.preview_side
        self.decode_workers = int(decode_workers or default_workers(getattr(scorer, "device", None)))
        self.model_streams = max(1, int(model_streams or default_model_streams(scorer)))
        self._pool: ThreadPoolExecutor | None = None
        self._model_pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        self._jobs = threading.BoundedSemaphore(int(max_pending_jobs or 2 * self.batch_size))
        self._job_futures: set[Future] = set()
        self._job_error: BaseException | None = None

    # ---------------------------------------------------------------------------- workers
    def _workers(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=self.decode_workers, thread_name_prefix="s2sw-worker")
            return self._pool

    def _model_threads(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._model_pool is None:
                self._model_pool = ThreadPoolExecutor(max_workers=self.model_streams, thread_name_prefix="s2sw-model")
            return self._model_pool

    def submit(self, fn, *args, **kwargs) -> Future:
        """Run ``fn(*args, **kwargs)`` on the worker pool (drawing and writing an overlay while
        the model scores the next batch). Waits while ``max_pending_jobs`` jobs are queued or
        running, so memory stays bounded. :meth:`drain` waits for them and raises the first
        failure."""
        self._jobs.acquire()
        try:
            fut = self._workers().submit(fn, *args, **kwargs)
        except BaseException:
            self._jobs.release()
            raise
        with self._pool_lock:
            self._job_futures.add(fut)
        fut.add_done_callback(self._job_done)
        return fut

    def _job_done(self, fut: Future) -> None:
        with self._pool_lock:
            self._job_futures.discard(fut)
            if not fut.cancelled() and fut.exception() is not None and self._job_error is None:
                self._job_error = fut.exception()
        self._jobs.release()

    def drain(self) -> None:
        """Wait for every job of :meth:`submit`; raise the first failure since the last
        :meth:`drain`, if any."""
        with self._pool_lock:
            futures = list(self._job_futures)
        for f in futures:
            f.exception()  # waits
        with self._pool_lock:
            error, self._job_error = self._job_error, None
        if error is not None:
            raise error

    def close(self) -> None:
        """Wait for the jobs (their failures are :meth:`drain`'s to report) and stop the worker
        threads; a later call starts new ones."""
        with self._pool_lock:
            pools = (self._pool, self._model_pool)
            self._pool = self._model_pool = None
        for pool in pools:
            if pool is not None:
                pool.shutdown(wait=True)

    # ---------------------------------------------------------------------------- stages
    def decode(self, source: str | os.PathLike | bytes, *, index: int = 0, name: str | None = None,
               label: str | None = None, digest: bool = False) -> ScoredImage:
        """See :meth:`Decoder.decode`."""
        return self.decoder.decode(source, index=index, name=name, label=label, digest=digest)

    def score_batch(self, records: Sequence[ScoredImage]) -> None:
        """Score decoded records in one scorer call (in place)."""
        if not records:
            return
        t = time.perf_counter()
        scores, maps = self.scorer.score(np.stack([r.pixels for r in records]))
        ms = (time.perf_counter() - t) * 1000
        self.attach(records, scores, maps, inference_ms=ms)

    def attach(self, records: Sequence[ScoredImage], scores: np.ndarray, maps: np.ndarray, *,
               inference_ms: float = 0.0, queue_ms: Sequence[float] | None = None,
               threshold: float | None | type(...) = ...) -> None:
        """Put a scorer's outputs into the records (and apply the threshold: the pipeline's, or
        ``threshold`` when given, e.g. a request's own)."""
        thr = self.threshold if threshold is ... else threshold
        for i, r in enumerate(records):
            r.set_result(float(scores[i]), np.asarray(maps[i], dtype=np.float32), thr, self.map_scale)
            r.timings_ms.update(inference=inference_ms, batch_size=len(records),
                                queue=0.0 if queue_ms is None else queue_ms[i])

    def overlay(self, rec: ScoredImage, **options: Any) -> bytes:
        """The record's heat-map overlay PNG (``options``: see :func:`overlay_png`)."""
        t = time.perf_counter()
        png = overlay_png(rec.preview, rec.anomaly_map, **options)
        rec.timings_ms["overlay"] = (time.perf_counter() - t) * 1000
        return png

    # ---------------------------------------------------------------------------- stream
    def run(self, sources: Iterable[tuple[str | os.PathLike | bytes, str]], *, lookahead: int | None = None,
            progress=None, digest: bool = False) -> Iterator[ScoredImage]:
        """Score ``(source, name)`` pairs; yields records in input order.

        Images are decoded on the worker threads at most ``lookahead`` (default
        ``2 * batch_size``, at least ``batch_size + decode_workers``) ahead of scoring, so
        memory stays bounded however many inputs there are and the next batch is decoded while
        the model scores this one. A file that cannot be decoded yields a record with ``error``
        set; it never stops the run. ``progress`` (optional) gets ``update(n)`` calls;
        ``digest``: records carry the SHA-256 of the bytes decoded (see :meth:`Decoder.decode`).
        """
        lookahead = int(lookahead or max(2 * self.batch_size, self.batch_size + self.decode_workers))
        pending: list[ScoredImage] = []
        ready: deque[ScoredImage] = deque()
        pool = self._workers()
        it = iter(enumerate(sources))
        futures: deque[Future] = deque()
        model = _BatchesInFlight(self, progress)

        def submit_next() -> bool:
            nxt = next(it, None)
            if nxt is None:
                return False
            i, (src, name) = nxt
            futures.append(pool.submit(self.decode, src, index=i, name=name, digest=digest))
            return True

        try:
            while len(futures) < lookahead and submit_next():
                pass
            while futures:
                rec = futures.popleft().result()
                submit_next()
                ready.append(rec)
                if rec.decoded:
                    pending.append(rec)
                    if len(pending) >= self.batch_size:
                        model.add(pending)
                        pending = []
                elif progress is not None:
                    progress.update(1)
                model.reap(wait=False)
                # yield in input order: everything before the first record not scored yet
                while ready and model.settled(ready[0]):
                    yield ready.popleft()
            model.add(pending)
            while model.batches:
                model.reap(wait=True)
                while ready and model.settled(ready[0]):
                    yield ready.popleft()
            yield from ready
        finally:  # a consumer that stops early: drop what was decoded ahead, let the model finish
            for f in futures:
                f.cancel()
            model.wait()


class _BatchesInFlight:
    """The batches of one :meth:`InferencePipeline.run` that the model has: scored on the
    calling thread with one model stream, else on the model threads (oldest first, at most one
    queued behind the ``model_streams`` running)."""

    def __init__(self, pipeline: InferencePipeline, progress=None):
        self.pipeline = pipeline
        self.progress = progress
        self.batches: deque[tuple[Future, list[ScoredImage]]] = deque()
        self.busy: set[int] = set()  # indices of their records: not to be yielded before their batch is done

    def add(self, batch: list[ScoredImage]) -> None:
        if not batch:
            return
        p = self.pipeline
        if p.model_streams == 1:
            p.score_batch(batch)
            if self.progress is not None:
                self.progress.update(len(batch))
            return
        while len(self.batches) > p.model_streams:
            self.reap(wait=True)
        self.busy.update(r.index for r in batch)
        self.batches.append((p._model_threads().submit(p.score_batch, batch), batch))

    def reap(self, wait: bool) -> None:
        """Take the finished batches, in order; ``wait``: at least the oldest. A scorer's failure
        is raised here and stops the run, as when it runs on the calling thread."""
        while self.batches and (wait or self.batches[0][0].done()):
            fut, batch = self.batches.popleft()
            fut.result()
            self.busy.difference_update(r.index for r in batch)
            if self.progress is not None:
                self.progress.update(len(batch))
            wait = False

    def settled(self, rec: ScoredImage) -> bool:
        """Whether ``rec`` is final: not waiting for the model (scored, or not decodable)."""
        return not rec.decoded and rec.index not in self.busy

    def wait(self) -> None:
        """Let the batches still running finish (their failures are not raised)."""
        for f, _ in self.batches:
            f.exception()


#: most pipeline workers by default next to an accelerator
MAX_ACCELERATOR_WORKERS = 16


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity where the platform has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def default_model_streams(scorer) -> int:
    """Batches scored at once by default: the scorer's own ``model_streams`` (a scorer that can
    be called from several threads at once says how many calls pay off), else 1."""
    return max(1, int(getattr(scorer, "model_streams", 1) or 1))


def default_workers(device: str | None = None) -> int:
    """Worker threads of a pipeline whose model runs on ``device``: on the CPU the cores, at
    most 4, at least 2 (one decodes while another waits on a disk; more would take cores from the
    model); on an accelerator (``cuda``, ...) every core this process may use, at most
    :data:`MAX_ACCELERATOR_WORKERS`: decoding and overlays are then the bottleneck, and a
    starved GPU waits (docs/usage.md, "Feeding a GPU", has the figures)."""
    cores = available_cores()
    if device is not None and not str(device).lower().startswith("cpu"):
        return max(2, min(MAX_ACCELERATOR_WORKERS, cores))
    return max(2, min(4, cores))
