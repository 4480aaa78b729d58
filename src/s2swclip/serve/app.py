"""``s2swclip serve``: one process, one model, a REST API and an inspection web page.

Routes and HTTP concerns only; decoding, scoring and overlays are the inference pipeline's
(:mod:`s2swclip.inference.pipeline`), the same one ``s2swclip predict`` uses.

Endpoints (OpenAPI schema at ``/openapi.json``):

* ``POST /v1/predict`` -- multipart form, one or more files (field ``files``). Per file: name,
  anomaly score, decision (when a threshold is set), heatmap overlay PNG (base64), the overlay's
  colour scale (``heatmap``: ``lo``/``hi``/``threshold`` on the map's per-layer scale, see
  :mod:`s2swclip.viz.heatmap`; the page draws it as a colour bar) and timing;
  a file that is not an image, is corrupt or has too many pixels gets an ``error`` entry and
  the others are still scored. Status 200 when at least one file was scored; when none was,
  413 if a file was over the pixel limit, else 422 -- the body still lists every file.
  Request-level answers: 413 (body over ``--max-upload-mb``, more files than the queue
  holds), 408 (upload stalled), 503 (inference queue or request-body budget full,
  ``Retry-After: 1``), 400 (not multipart, no files).
  ``?profile=NAME`` scores with a product profile (``--profiles DIR``): its bank, few-shot weight
  and threshold; the answer carries ``profile`` and ``profile_version``; an unknown one is 404.
* ``/v1/profiles...`` -- the product profiles (:mod:`s2swclip.serve.profiles_routes`).
* ``GET /v1/health`` -- liveness plus queue and memory-budget statistics.
* ``GET /v1/model`` -- what is loaded, the threshold and the serving limits.
* ``GET /`` -- the inspection page (``static/``; no external assets).

Memory is a budget the operator sets, not something clients choose: request bodies are capped
(``--max-upload-mb``) and share one budget (``--max-inflight-mb``); connections and the time to
send request headers are bounded (:mod:`s2swclip.serve.limits`); each file is decoded under a
shared pixel budget (``--max-inflight-mpx``) by at most ``decode_threads`` threads and reduced
at once to the model input and a preview, and only those are kept while the request waits for
the model. Every image of every request goes
through one :class:`~s2swclip.serve.batcher.MicroBatcher`, so images that arrive together are
scored in one call, from one worker thread. Exposure controls (token, Host check, cross-site
requests, security headers) are :mod:`s2swclip.serve.security`'s; nothing is written to disk
unless a save folder is given (:mod:`s2swclip.serve.storage`).
"""

from __future__ import annotations

import base64
import logging
import math
import os
import time
import uuid
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from importlib import resources
from typing import Any

from ..errors import InferenceTimeout, S2SWError, check_number

try:
    import anyio
    from fastapi import FastAPI, Request
    from fastapi.responses import FileResponse, JSONResponse
    from fastapi.staticfiles import StaticFiles
    from starlette.concurrency import run_in_threadpool
except ImportError:  # pragma: no cover - depends on the installation
    raise S2SWError("serving needs FastAPI, uvicorn and python-multipart: "
                    "pip install fastapi uvicorn python-multipart") from None

from ..viz.heatmap import HEATMAP_SCALES, HeatmapScale, standalone_scale
from ..inference.pipeline import DEFAULT_MAX_INFLIGHT_PIXELS, DEFAULT_MAX_PIXELS, InferencePipeline, ScoredImage
from .batcher import MAX_WAIT_MS, BatcherClosed, MicroBatcher, QueueFull
from .limits import DEFAULT_MAX_INFLIGHT_BYTES, BodyBudgetMiddleware, ByteBudget, ConnectionLimits, server_config
from .security import SecurityMiddleware, SecuritySettings, fastapi_docs_kwargs
from .storage import SaveStore
from .upload import UploadError, read_multipart

log = logging.getLogger(__name__)

DEFAULT_MAX_UPLOAD_BYTES = 20_000_000
FILE_FIELDS = ("files", "file", "images", "image")
PAGE_CSP = ("default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
            "connect-src 'self'; frame-ancestors 'none'")

_PREDICT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["files"],
                    "properties": {
                        "files": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "description": "one or more image files (PNG, JPEG, BMP, TIFF, WebP, GIF, ...)",
                        }
                    },
                }
            }
        },
    },
    "responses": {
        "408": {"description": "the upload stalled"},
        "413": {"description": "request body, file count or image pixels over the limits"},
        "422": {"description": "no file could be scored (not images / corrupt); body lists why"},
        "503": {"description": "inference queue full; retry later"},
    },
}


def _error_json(status: int, detail: str, headers: dict | None = None, **extra):
    return JSONResponse({"detail": detail, **extra}, status_code=status, headers=headers)


def _row(rec: ScoredImage, filename: str, png: bytes | None, total_ms: float, saved: dict | None,
         heatmap: dict | None = None) -> dict:
    """The JSON row of one file of a request."""
    row: dict[str, Any] = {"index": rec.index, "filename": filename}
    if rec.score is None:
        row.update(ok=False, error=rec.error, error_code=rec.error_code)
        return row
    t = rec.timings_ms
    row.update(ok=True, score=rec.score, anomalous=rec.anomalous, width=rec.width, height=rec.height,
               overlay_png=None if png is None else base64.b64encode(png).decode("ascii"), heatmap=heatmap,
               timing_ms={"decode": round(t.get("decode", 0.0), 3), "queue": round(t.get("queue", 0.0), 3),
                          "inference": round(t.get("inference", 0.0), 3), "batch_size": t.get("batch_size", 0),
                          "overlay": round(t.get("overlay", 0.0), 3), "request_total": round(total_ms, 3)})
    if saved is not None:
        row["saved"] = saved
    return row


def create_app(
    model,
    *,
    threshold: float | None = None,
    save_dir: str | os.PathLike | None = None,
    save_max_bytes: int | None = None,
    max_batch: int = 8,
    batch_wait_ms: float = 10.0,
    queue_size: int = 64,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_inflight_pixels: int = DEFAULT_MAX_INFLIGHT_PIXELS,
    max_inflight_bytes: int = DEFAULT_MAX_INFLIGHT_BYTES,
    decode_threads: int = 2,
    upload_idle_timeout_s: float = 30.0,
    upload_total_timeout_s: float = 300.0,
    security: SecuritySettings | None = None,
    warmup: bool = False,
    heatmap_scale: str = "fixed",
    profiles=None,
):
    """Build the FastAPI app around a loaded model.

    Args:
        model: a scorer (:class:`~s2swclip.inference.pipeline.Scorer`) or a detector (wrapped
            by :func:`~s2swclip.inference.scorers.as_scorer`).
        threshold: decision threshold (``anomalous = score > threshold``); None: no decision.
        save_dir: write uploads, overlays and ``results.jsonl`` here; None: write nothing.
        save_max_bytes: most bytes ``save_dir`` may hold (its existing content included).
        max_batch, batch_wait_ms, queue_size: micro-batching (see :class:`MicroBatcher`).
        max_upload_bytes: largest request body; max_pixels: largest image (width x height).
        max_inflight_pixels: decoded full-resolution pixels held at once by all requests.
        max_inflight_bytes: request-body bytes held at once by all requests (more: 503, see
            :mod:`s2swclip.serve.limits`); at least ``max_upload_bytes``.
        decode_threads: files decoded at the same time, across all requests.
        upload_idle_timeout_s, upload_total_timeout_s: stalled or too slow uploads get 408.
        security: token, Host check and headers (default: loopback, no token).
        warmup: run one dummy batch when the app starts (first real request is not slow).
        heatmap_scale: ``fixed``: overlays centred on the request's threshold (the server's,
            or the ``threshold`` query parameter), the whole [0, 1] per-layer scale without
            one; ``image``: each map's own range (see :mod:`s2swclip.viz.heatmap`).
        profiles: a :class:`~s2swclip.serve.profiles_routes.ProfilesService` (``--profiles DIR``):
            the ``/v1/profiles`` routes and ``/v1/predict?profile=NAME``.
    """
    from .. import __version__

    if not hasattr(model, "score"):
        from ..inference.scorers import as_scorer

        model = as_scorer(model)
    for name, value in (("max_batch", max_batch), ("queue_size", queue_size), ("max_upload_bytes", max_upload_bytes),
                        ("max_pixels", max_pixels), ("max_inflight_pixels", max_inflight_pixels),
                        ("max_inflight_bytes", max_inflight_bytes), ("decode_threads", decode_threads)):
        check_number(name, value, 1, integer=True)
    check_number("batch_wait_ms", batch_wait_ms, 0, MAX_WAIT_MS)
    check_number("upload_idle_timeout_s", upload_idle_timeout_s, 0, 3600, lo_open=True)
    check_number("upload_total_timeout_s", upload_total_timeout_s, 0, 86_400, lo_open=True)
    if int(max_inflight_bytes) < int(max_upload_bytes):
        raise S2SWError(f"max_inflight_bytes ({int(max_inflight_bytes)}) must be at least max_upload_bytes "
                        f"({int(max_upload_bytes)}): the body budget must hold one largest upload",
                        fields=["max_inflight_bytes", "max_upload_bytes"])
    if threshold is not None and not math.isfinite(float(threshold)):
        raise S2SWError(f"threshold must be a finite number, got {threshold}")
    if heatmap_scale not in HEATMAP_SCALES:
        raise S2SWError(f"invalid heatmap scale {heatmap_scale!r}: choose one of {', '.join(HEATMAP_SCALES)}")
    map_scale = getattr(model, "map_scale", None)
    body_budget = ByteBudget(max_inflight_bytes)
    pipe = InferencePipeline(model, threshold=threshold, max_pixels=int(max_pixels),
                             max_inflight_pixels=int(max_inflight_pixels))
    store = SaveStore(save_dir, save_max_bytes) if save_dir is not None else None
    security = security or SecuritySettings()

    def run_batch(items: list) -> list:
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

    batcher = MicroBatcher(run_batch, max_batch=max_batch, max_wait_ms=batch_wait_ms,
                           queue_size=queue_size, name="s2sw-inference")
    started = time.time()
    model_info = {
        **model.describe(),
        "image_size": pipe.image_size,
        "threshold": None if threshold is None else float(threshold),
        "limits": {"max_batch": int(max_batch), "batch_wait_ms": float(batch_wait_ms),
                   "queue_size": int(queue_size), "max_upload_bytes": int(max_upload_bytes),
                   "max_pixels": int(max_pixels), "max_inflight_pixels": int(max_inflight_pixels),
                   "max_inflight_bytes": int(max_inflight_bytes),
                   "save_max_bytes": None if save_max_bytes is None else int(save_max_bytes)},
        "save": store is not None,
        "heatmap_scale": heatmap_scale,
        "auth": security.token is not None,
        "version": __version__,
        "profiles": None if profiles is None else profiles.limits(),
    }
    decode_limiter = anyio.CapacityLimiter(int(decode_threads))

    @asynccontextmanager
    async def lifespan(app):
        if warmup:
            import numpy as np

            await batcher.run([(np.zeros((3, pipe.image_size, pipe.image_size), np.float32), model)])
        yield
        await run_in_threadpool(batcher.close)

    app = FastAPI(
        title="S2SWCLIP inspection service",
        version=__version__,
        description="Zero-shot visual anomaly detection: upload images, get anomaly scores and heatmaps.",
        lifespan=lifespan,
        **fastapi_docs_kwargs(),
    )
    app.add_middleware(BodyBudgetMiddleware, budget=body_budget, max_request_bytes=int(max_upload_bytes))
    app.add_middleware(SecurityMiddleware, settings=security)
    app.state.batcher = batcher
    app.state.pipeline = pipe
    app.state.model_info = model_info
    app.state.save_root = None if store is None else store.root
    if profiles is not None:
        from .profiles_routes import profiles_router

        profiles.store.budget, profiles.store.max_pixels = pipe.budget, int(max_pixels)  # the service's budgets
        app.include_router(profiles_router(profiles, max_upload_bytes=max_upload_bytes,
                                           idle_timeout_s=upload_idle_timeout_s,
                                           total_timeout_s=upload_total_timeout_s))

    static_dir = resources.files("s2swclip.serve") / "static"

    # ------------------------------------------------------------------------------ page
    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(str(static_dir / "index.html"), media_type="text/html",
                            headers={"Content-Security-Policy": PAGE_CSP, "Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=str(static_dir)), name="static")

    # ------------------------------------------------------------------------------- API
    @app.get("/v1/health", tags=["service"], summary="Liveness, queue and memory-budget statistics")
    async def health():
        body = {
            "status": "ok" if batcher.alive else "unavailable",
            "uptime_s": round(time.time() - started, 3),
            "queue": {"pending": batcher.pending, "capacity": batcher.queue_size},
            "batches": batcher.batches,
            "images_scored": batcher.items,
            "rejected_queue_full": batcher.rejected,
            "decoding": {"pixels_in_flight": pipe.budget.in_use, "peak_pixels_in_flight": pipe.budget.peak,
                         "budget_pixels": pipe.budget.max_pixels},
            "bodies": {"bytes_in_flight": body_budget.in_use, "peak_bytes_in_flight": body_budget.peak,
                       "budget_bytes": body_budget.max_bytes, "rejected_budget_full": body_budget.refused},
            "last_error": batcher.last_error,
        }
        return JSONResponse(body, status_code=200 if batcher.alive else 503)

    @app.get("/v1/model", tags=["service"], summary="The loaded model and the serving settings")
    async def model_route():
        return model_info

    def heatmap(rec: ScoredImage, thr: float | None, bound: float | None = map_scale) -> HeatmapScale:
        """The colour scale of one overlay (see ``heatmap_scale``)."""
        return standalone_scale(heatmap_scale, rec.anomaly_map, thr, bound)

    def finish(records: list[ScoredImage], parts: list, want_overlay: bool, request_id: str,
               thr: float | None, bound: float | None = map_scale, traced: dict | None = None) -> dict:
        """Overlays and saving, off the event loop; returns {index: (png, saved, heatmap)}."""
        out = {}
        for rec in records:
            scale = heatmap(rec, thr, bound)
            png = pipe.overlay(rec, scale=scale) if (want_overlay or store is not None) else None
            saved = None
            if store is not None:
                part = parts[rec.index]
                record = {"time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
                          "filename": part.filename, "score": rec.score, **(traced or {})}
                saved = store.save(request_id, rec.index, part.filename, rec.format or "", bytes(part.data),
                                   png, record)
            out[rec.index] = (png if want_overlay else None, saved, scale.to_dict() if want_overlay else None)
            rec.release()
        return out

    @app.post("/v1/predict", tags=["inspection"], summary="Score one or more images",
              openapi_extra=_PREDICT_BODY)
    async def predict(request: Request, threshold: float | None = None, overlay: bool = True,
                      profile: str | None = None):
        """Score uploaded images (multipart field ``files``, repeatable).

        Query parameters: ``threshold`` overrides the server's decision threshold for this
        request; ``overlay=false`` leaves the heatmap PNGs out (faster, smaller answers);
        ``profile`` scores with that product profile (its bank, weight and threshold; the
        answer names it and its version; unknown: 404).
        """
        t0 = time.perf_counter()
        scorer, traced = model, {}
        if profile is not None:
            from .profiles_routes import predict_profile

            found = predict_profile(profiles, profile)
            if isinstance(found, JSONResponse):
                return found
            scorer, traced = found
        thr = getattr(scorer, "threshold", None) if profile is not None else model_info["threshold"]
        thr = thr if threshold is None else float(threshold)
        if thr is not None and not math.isfinite(thr):
            return _error_json(400, f"threshold must be a finite number, got {threshold}")
        try:
            parts = await read_multipart(request.headers.get("content-type"),
                                         request.headers.get("content-length"), request.stream(),
                                         max_bytes=int(max_upload_bytes), max_parts=int(queue_size) + 16,
                                         idle_timeout_s=upload_idle_timeout_s,
                                         total_timeout_s=upload_total_timeout_s)
        except UploadError as e:
            return _error_json(e.status, e.message, headers=e.headers)
        files = [p for p in parts if p.filename is not None or p.name in FILE_FIELDS]
        del parts
        if not files:
            return _error_json(400, "no files in the request: send images in the multipart field 'files'")
        if len(files) > batcher.queue_size:
            return _error_json(413, f"{len(files)} files in one request, more than the inference queue holds "
                                    f"({batcher.queue_size}, --queue-size); split the upload")
        names = [p.filename or p.name for p in files]
        records: list[ScoredImage] = []
        for i, p in enumerate(files):  # one file at a time; decoding threads shared by all requests
            rec = await anyio.to_thread.run_sync(
                lambda p=p, i=i: pipe.decode(bytes(p.data), index=i, name=names[i], label=names[i]),
                limiter=decode_limiter)
            if store is None:
                p.data = bytearray()  # the bytes are not needed any more
            records.append(rec)
        good = [r for r in records if r.decoded]
        extras: dict = {}
        if good:
            try:
                results = await batcher.run([(r.pixels, scorer) for r in good])
            except QueueFull as exc:
                return _error_json(503, str(exc), headers={"Retry-After": "1"})
            except BatcherClosed as exc:
                return _error_json(503, f"{exc}; retry later", headers={"Retry-After": "1"})
            except InferenceTimeout as exc:
                return _error_json(504, str(exc))
            except Exception as exc:  # noqa: BLE001 - a model failure is the server's error
                return _error_json(500, f"inference failed: {type(exc).__name__}: {exc}")
            for rec, ((score, amap), info) in zip(good, results):
                rec.set_result(score, amap, thr)  # a non-finite result: that row's error
                rec.timings_ms.update(queue=info.queue_ms, inference=info.run_ms, batch_size=info.batch_size)
            good = [r for r in good if r.error is None]
            request_id = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S") + "_" + uuid.uuid4().hex[:8]
            try:
                extras = await run_in_threadpool(finish, good, files, overlay, request_id, thr,
                                                 getattr(scorer, "map_scale", None), traced)
            except OSError as exc:
                return _error_json(500, f"cannot save results under {store.root if store else '?'}: {exc}")
        total_ms = (time.perf_counter() - t0) * 1000
        rows = []
        for r in records:
            png, saved, scale = extras.get(r.index, (None, None, None))
            rows.append(_row(r, names[r.index], png, total_ms, saved, scale))
        body = {**traced, "threshold": thr, "image_size": pipe.image_size, "n_scored": len(good),
                "n_failed": len(records) - len(good), "results": rows,
                "timing_ms": {"total": round(total_ms, 3)}}
        if good:
            return body
        too_big = any(r.error_code == "too_many_pixels" for r in records)
        first = next(r for r in records if not too_big or r.error_code == "too_many_pixels")
        detail = f"no image could be scored: {names[first.index]}: {first.error}"
        return JSONResponse(dict(body, detail=detail), status_code=413 if too_big else 422)

    return app


# ------------------------------------------------------------------------------------- serve
def bind_socket(host: str, port: int):
    """A listening TCP socket on ``host:port`` (IPv4 or IPv6); S2SWError when that fails."""
    import socket

    if not 0 <= int(port) <= 65535:
        raise S2SWError(f"--port must be in 0..65535, got {port}")
    try:
        infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise S2SWError(f"cannot resolve --host {host!r}: {exc.strerror or exc}") from None
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as exc:
        sock.close()
        raise S2SWError(f"cannot listen on {host}:{port}: {exc.strerror or exc} "
                        f"(another server running? choose another --port)") from None
    return sock


def run_server(app, sock, limits: ConnectionLimits | None = None) -> None:
    """Serve ``app`` with uvicorn on the bound socket until Ctrl+C, under ``limits`` (connections
    and header deadline, see :mod:`s2swclip.serve.limits`)."""
    import uvicorn

    uvicorn.Server(server_config(app, limits)).run(sockets=[sock])
