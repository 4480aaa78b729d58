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

from ..errors import InferenceTimeout
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
        profiles: a :class:`~s2swclip.serve.profiles_routes.ProfilesService` (``--profiles DIR``)
            or None; a request may score with one of its profiles (micro-batches are grouped per
            scorer).
    """

    def __init__(self, scorer, settings: ServeSettings, *, auth: bool = False, profiles=None):
        from .. import __version__

        self.settings = s = settings
        self.profiles = profiles
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
            "profiles": None if profiles is None else profiles.limits(),
        }

    def _score_arrays(self, items: list) -> list:
        """Items are ``(pixels, scorer)``: one scorer call per scorer (the model or a profile's)."""
        import numpy as np

        out: list = [None] * len(items)
        groups: dict[int, list[int]] = {}
        for i, (_, scorer) in enumerate(items):
            groups.setdefault(id(scorer), []).append(i)
        for idx in groups.values():
            scores, maps = items[idx[0]][1].score(np.stack([items[i][0] for i in idx]))
            for j, i in enumerate(idx):
                out[i] = (float(scores[j]), maps[j])
        return out

    # ---------------------------------------------------------------------------- service
    async def warm_up(self) -> None:
        import numpy as np

        size = self.pipe.image_size
        await self.batcher.run([(np.zeros((3, size, size), np.float32), self.pipe.scorer)])

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
    async def predict(self, files: Sequence, threshold: float | None, overlay: bool, *, scorer=None,
                      traced: dict | None = None) -> tuple[dict[str, Any], int]:
        """Score the uploaded ``files`` (multipart parts) at ``threshold`` with ``scorer`` (default:
        the service's model; a profile's scorer, whose ``traced`` fields -- profile name and
        version -- go into the answer and the saved records); the body and the HTTP status (200
        when a file was scored, else 413 (a file over the pixel limit) or 422). Raises
        :class:`ServiceError` (504 when the inference ran past its timeout)."""
        t0 = time.perf_counter()
        scorer = self.pipe.scorer if scorer is None else scorer
        traced = traced or {}
        if len(files) > self.batcher.queue_size:
            raise ServiceError(413, f"{len(files)} files in one request, more than the inference queue holds "
                                    f"({self.batcher.queue_size}, --queue-size); split the upload")
        names = [p.filename or p.name for p in files]
        records = await self._decode(files, names)
        good = [r for r in records if r.decoded]
        extras: dict = {}
        if good:
            await self._score(good, threshold, scorer)
            good = [r for r in good if r.error is None]  # a non-finite result is that row's error
            request_id = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S") + "_" + uuid.uuid4().hex[:8]
            try:
                extras = await run_in_threadpool(self._finish, good, files, overlay, request_id, threshold,
                                                 getattr(scorer, "map_scale", None), traced)
            except OSError as exc:
                root = self.store.root if self.store else "?"
                raise ServiceError(500, f"cannot save results under {root}: {exc}") from None
        total_ms = (time.perf_counter() - t0) * 1000
        rows = [_row(r, names[r.index], total_ms, *extras.get(r.index, (None, None, None))) for r in records]
        body = {**traced, "threshold": threshold, "image_size": self.pipe.image_size, "n_scored": len(good),
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

    async def _score(self, good: list[ScoredImage], threshold: float | None, scorer) -> None:
        """Score decoded records with ``scorer`` in the micro-batcher; the results go into them
        (a NaN or infinite result makes that record an error, ``non_finite``)."""
        import numpy as np

        try:
            results = await self.batcher.run([(r.pixels, scorer) for r in good])
        except QueueFull as exc:
            raise ServiceError(503, str(exc), {"Retry-After": "1"}) from None
        except BatcherClosed as exc:
            raise ServiceError(503, f"{exc}; retry later", {"Retry-After": "1"}) from None
        except InferenceTimeout as exc:
            raise ServiceError(504, str(exc)) from None
        except Exception as exc:  # noqa: BLE001 - a model failure is the server's error
            raise ServiceError(500, f"inference failed: {type(exc).__name__}: {exc}") from None
        map_scale = getattr(scorer, "map_scale", None)
        for rec, ((score, amap), info) in zip(good, results):
            rec.set_result(float(score), np.asarray(amap, dtype=np.float32), threshold, map_scale)
            # batch_size: the micro-batch, requests together
            rec.timings_ms.update(inference=info.run_ms, queue=info.queue_ms, batch_size=info.batch_size)

    def _finish(self, records: list[ScoredImage], parts: list, want_overlay: bool, request_id: str,
                threshold: float | None, bound: float | None = None, traced: dict | None = None) -> dict:
        """Overlays and saving, off the event loop; returns {index: (png, saved, heatmap)}."""
        out = {}
        for rec in records:
            scale = standalone_scale(self.settings.heatmap_scale, rec.anomaly_map, threshold, bound)
            png = self.pipe.overlay(rec, scale=scale) if (want_overlay or self.store is not None) else None
            saved = None
            if self.store is not None:
                part = parts[rec.index]
                record = {"time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
                          "filename": part.filename, "score": rec.score, **(traced or {})}
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
