"""The inspection service behind the routes of :mod:`s2swclip.serve.app`: decode uploads, score
them through the one :class:`~s2swclip.inference.pipeline.InferencePipeline` (micro-batched), draw
overlays, save, and answer one row per file -- the row of ``s2swclip predict``
(:func:`~s2swclip.inference.local.result_row`: ``score``, ``anomalous``, ``map_max``,
``map_mean``, ``map_frac_above``, ``error``...) with the service's own fields added.
"""

from __future__ import annotations

import base64
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Sequence

import anyio
from starlette.concurrency import run_in_threadpool

from ..inference.local import result_row
from ..inference.pipeline import InferencePipeline, ScoredImage
from ..specs import ServeSettings
from ..viz.heatmap import standalone_scale
from .batcher import BatcherClosed, MicroBatcher, QueueFull
from .limits import ByteBudget
from .storage import SaveStore

__all__ = ["InspectionService", "ServiceError"]

FILE_FIELDS = ("files", "file", "images", "image")


@dataclass
class ServiceError(Exception):
    """A request the service cannot answer with rows: HTTP ``status``, ``detail``, ``headers``."""

    status: int
    detail: str
    headers: dict[str, str] | None = field(default=None)


class InspectionService:
    """One model, its pipeline, micro-batcher and save folder (see :class:`~s2swclip.specs.ServeSettings`).

    Args:
        scorer: a :class:`~s2swclip.inference.pipeline.Scorer`.
        settings: the service's options.
        auth: whether requests need a token (reported by :meth:`describe`).
    """

    def __init__(self, scorer, settings: ServeSettings, *, auth: bool = False):
        from .. import __version__

        self.settings = s = settings
        self.pipe = InferencePipeline(scorer, threshold=s.threshold, max_pixels=int(s.max_pixels),
                                      max_inflight_pixels=int(s.max_inflight_pixels))
        self.body_budget = ByteBudget(s.max_inflight_bytes)  # request bodies, all requests together
        self.store = SaveStore(s.save_dir, s.save_max_bytes) if s.save_dir is not None else None
        self.batcher = MicroBatcher(self._score_arrays, max_batch=s.max_batch, max_wait_ms=s.batch_wait_ms,
                                    queue_size=s.queue_size, name="s2sw-inference")
        self.decode_limiter = anyio.CapacityLimiter(int(s.decode_threads))
        self.started = time.time()
        self.model_info = {
            **scorer.describe(), "image_size": self.pipe.image_size,
            "threshold": None if s.threshold is None else float(s.threshold), "limits": s.describe_limits(),
            "save": self.store is not None, "heatmap_scale": s.heatmap_scale, "auth": auth, "version": __version__,
        }

    def _score_arrays(self, arrays: list) -> list:
        import numpy as np

        scores, maps = self.pipe.scorer.score(np.stack(arrays))
        return [(float(scores[i]), maps[i]) for i in range(len(arrays))]

    # ---------------------------------------------------------------------------- service
    async def warm_up(self) -> None:
        import numpy as np

        size = self.pipe.image_size
        await self.batcher.run([np.zeros((3, size, size), np.float32)])

    async def close(self) -> None:
        await run_in_threadpool(self.batcher.close)

    def health(self) -> tuple[dict[str, Any], int]:
        """Liveness, queue and memory-budget statistics, and the HTTP status (503: not alive)."""
        b, budget = self.batcher, self.pipe.budget
        body = {
            "status": "ok" if b.alive else "unavailable",
            "uptime_s": round(time.time() - self.started, 3),
            "queue": {"pending": b.pending, "capacity": b.queue_size},
            "batches": b.batches,
            "images_scored": b.items,
            "rejected_queue_full": b.rejected,
            "decoding": {"pixels_in_flight": budget.in_use, "peak_pixels_in_flight": budget.peak,
                         "budget_pixels": budget.max_pixels},
            "bodies": {"bytes_in_flight": self.body_budget.in_use, "peak_bytes_in_flight": self.body_budget.peak,
                       "budget_bytes": self.body_budget.max_bytes, "rejected_budget_full": self.body_budget.refused},
            "last_error": b.last_error,
        }
        return body, 200 if b.alive else 503

    # ---------------------------------------------------------------------------- predict
    async def predict(self, files: Sequence, threshold: float | None, overlay: bool) -> tuple[dict[str, Any], int]:
        """Score the uploaded ``files`` (multipart parts) at ``threshold``; the body and the HTTP
        status (200 when a file was scored, else 413 (a file over the pixel limit) or 422).
        Raises :class:`ServiceError`."""
        t0 = time.perf_counter()
        if len(files) > self.batcher.queue_size:
            raise ServiceError(413, f"{len(files)} files in one request, more than the inference queue holds "
                                    f"({self.batcher.queue_size}, --queue-size); split the upload")
        names = [p.filename or p.name for p in files]
        records = await self._decode(files, names)
        good = [r for r in records if r.decoded]
        extras: dict = {}
        if good:
            await self._score(good, threshold)
            request_id = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S") + "_" + uuid.uuid4().hex[:8]
            try:
                extras = await run_in_threadpool(self._finish, good, files, overlay, request_id, threshold)
            except OSError as exc:
                root = self.store.root if self.store else "?"
                raise ServiceError(500, f"cannot save results under {root}: {exc}") from None
        total_ms = (time.perf_counter() - t0) * 1000
        rows = [_row(r, names[r.index], total_ms, *extras.get(r.index, (None, None, None))) for r in records]
        body = {"threshold": threshold, "image_size": self.pipe.image_size, "n_scored": len(good),
                "n_failed": len(records) - len(good), "results": rows, "timing_ms": {"total": round(total_ms, 3)}}
        if good:
            return body, 200
        too_big = any(r.error_code == "too_many_pixels" for r in records)
        first = next(r for r in records if not too_big or r.error_code == "too_many_pixels")
        return dict(body, detail=f"no image could be scored: {names[first.index]}: {first.error}"), (
            413 if too_big else 422)

    async def _decode(self, files: Sequence, names: list[str]) -> list[ScoredImage]:
        """One file at a time; the decoding threads are shared by all requests."""
        records = []
        for i, p in enumerate(files):
            rec = await anyio.to_thread.run_sync(
                lambda p=p, i=i: self.pipe.decode(bytes(p.data), index=i, name=names[i], label=names[i]),
                limiter=self.decode_limiter)
            if self.store is None:
                p.data = bytearray()  # the bytes are not needed any more
            records.append(rec)
        return records

    async def _score(self, good: list[ScoredImage], threshold: float | None) -> None:
        """Score decoded records in the micro-batcher; the pipeline puts the results in them."""
        try:
            results = await self.batcher.run([r.pixels for r in good])
        except QueueFull as exc:
            raise ServiceError(503, str(exc), {"Retry-After": "1"}) from None
        except BatcherClosed as exc:
            raise ServiceError(503, f"{exc}; retry later", {"Retry-After": "1"}) from None
        except Exception as exc:  # noqa: BLE001 - a model failure is the server's error
            raise ServiceError(500, f"inference failed: {type(exc).__name__}: {exc}") from None
        for rec, ((score, amap), info) in zip(good, results):
            self.pipe.attach([rec], [score], [amap], inference_ms=info.run_ms, queue_ms=[info.queue_ms],
                             threshold=threshold)
            rec.timings_ms["batch_size"] = info.batch_size  # the micro-batch, requests together

    def _finish(self, records: list[ScoredImage], parts: list, want_overlay: bool, request_id: str,
                threshold: float | None) -> dict:
        """Overlays and saving, off the event loop; returns {index: (png, saved, heatmap)}."""
        out = {}
        for rec in records:
            scale = standalone_scale(self.settings.heatmap_scale, rec.anomaly_map, threshold, self.pipe.map_scale)
            png = self.pipe.overlay(rec, scale=scale) if (want_overlay or self.store is not None) else None
            saved = None
            if self.store is not None:
                part = parts[rec.index]
                record = {"time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
                          "filename": part.filename, "score": rec.score}
                saved = self.store.save(request_id, rec.index, part.filename, rec.format or "", bytes(part.data),
                                        png, record)
            out[rec.index] = (png if want_overlay else None, saved, scale.to_dict() if want_overlay else None)
            rec.release()
        return out


def _row(rec: ScoredImage, filename: str, total_ms: float, png: bytes | None, saved: dict | None,
         heatmap: dict | None) -> dict:
    """The JSON row of one file of a request: the ``predict`` row (the upload's name as ``path``
    and ``name``; the overlay is ``overlay_png`` here, not a file) and the service's fields."""
    row: dict[str, Any] = {"index": rec.index, "filename": filename, **result_row(rec, None)}
    if rec.score is None:
        row.update(ok=False)
        return row
    t = rec.timings_ms
    row.update(ok=True, width=rec.width, height=rec.height,
               overlay_png=None if png is None else base64.b64encode(png).decode("ascii"), heatmap=heatmap,
               timing_ms={"decode": round(t.get("decode", 0.0), 3), "queue": round(t.get("queue", 0.0), 3),
                          "inference": round(t.get("inference", 0.0), 3), "batch_size": t.get("batch_size", 0),
                          "overlay": round(t.get("overlay", 0.0), 3), "request_total": round(total_ms, 3)})
    if saved is not None:
        row["saved"] = saved
    return row
