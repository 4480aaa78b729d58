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

import logging
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

from ..errors import S2SWError

try:
    from fastapi import FastAPI, Request
    from fastapi.responses import FileResponse, JSONResponse
    from fastapi.staticfiles import StaticFiles
except ImportError:  # pragma: no cover - depends on the installation
    raise S2SWError("serving needs FastAPI, uvicorn and python-multipart: "
                    "pip install fastapi uvicorn python-multipart") from None

from ..specs import ServeSettings, SpecError, check_threshold
from .limits import BodyBudgetMiddleware, ConnectionLimits, server_config
from .security import SecurityMiddleware, SecuritySettings, fastapi_docs_kwargs
from .service import FILE_FIELDS, InspectionService, ServiceError
from .upload import UploadError, read_multipart

log = logging.getLogger(__name__)

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


def create_app(model, settings: ServeSettings | None = None, *, security: SecuritySettings | None = None,
               profiles=None, **options: Any):
    """Build the FastAPI app around a loaded model: thin routes over an
    :class:`~s2swclip.serve.service.InspectionService`.

    Args:
        model: a scorer (:class:`~s2swclip.inference.pipeline.Scorer`) or a detector (wrapped
            by :func:`~s2swclip.inference.scorers.as_scorer`).
        settings: the service's options (:class:`~s2swclip.specs.ServeSettings`); or give its
            fields as keyword ``options`` (``threshold=0.5, max_batch=4``...).
        security: token, Host check and headers (default: loopback, no token).
        profiles: a :class:`~s2swclip.serve.profiles_routes.ProfilesService` (``--profiles DIR``):
            the ``/v1/profiles`` routes and ``/v1/predict?profile=NAME``.
    """
    from .. import __version__

    if settings is None:
        settings = ServeSettings(**options)
    elif options:
        raise TypeError("give ServeSettings or its fields, not both")
    if not hasattr(model, "score"):
        from ..inference.scorers import as_scorer

        model = as_scorer(model)
    security = security or SecuritySettings()
    service = InspectionService(model, settings, auth=security.token is not None, profiles=profiles)

    @asynccontextmanager
    async def lifespan(app):
        if settings.warmup:
            await service.warm_up()
        yield
        await service.close()

    app = FastAPI(
        title="S2SWCLIP inspection service",
        version=__version__,
        description="Zero-shot visual anomaly detection: upload images, get anomaly scores and heatmaps.",
        lifespan=lifespan,
        **fastapi_docs_kwargs(),
    )
    app.add_middleware(BodyBudgetMiddleware, budget=service.body_budget,
                       max_request_bytes=int(settings.max_upload_bytes))
    app.add_middleware(SecurityMiddleware, settings=security)
    app.state.service = service
    app.state.batcher = service.batcher
    app.state.pipeline = service.pipe
    app.state.model_info = service.model_info
    app.state.save_root = None if service.store is None else service.store.root
    if profiles is not None:
        from .profiles_routes import profiles_router

        profiles.store.budget, profiles.store.max_pixels = service.pipe.budget, int(settings.max_pixels)
        app.include_router(profiles_router(profiles, max_upload_bytes=settings.max_upload_bytes,
                                           idle_timeout_s=settings.upload_idle_timeout_s,
                                           total_timeout_s=settings.upload_total_timeout_s))
    _add_page(app)
    app.add_api_route("/v1/health", _health, methods=["GET"], tags=["service"],
                      summary="Liveness, queue and memory-budget statistics")
    app.add_api_route("/v1/model", _model, methods=["GET"], tags=["service"],
                      summary="The loaded model and the serving settings")
    app.add_api_route("/v1/predict", _predict, methods=["POST"], tags=["inspection"],
                      summary="Score one or more images", openapi_extra=_PREDICT_BODY)
    return app


def _add_page(app) -> None:
    static_dir = resources.files("s2swclip.serve") / "static"

    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(str(static_dir / "index.html"), media_type="text/html",
                            headers={"Content-Security-Policy": PAGE_CSP, "Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=str(static_dir)), name="static")


async def _health(request: Request):
    body, status = request.app.state.service.health()
    return JSONResponse(body, status_code=status)


async def _model(request: Request):
    return request.app.state.service.model_info


async def _predict(request: Request, threshold: float | None = None, overlay: bool = True,
                   profile: str | None = None):
    """Score uploaded images (multipart field ``files``, repeatable).

    Query parameters: ``threshold`` overrides the server's decision threshold for this
    request; ``overlay=false`` leaves the heatmap PNGs out (faster, smaller answers);
    ``profile`` scores with that product profile (its bank, weight and threshold; the answer
    names it and its version; unknown: 404).
    """
    service: InspectionService = request.app.state.service
    s = service.settings
    scorer, traced = None, {}
    if profile is not None:
        from .profiles_routes import predict_profile

        found = await predict_profile(service.profiles, profile)
        if isinstance(found, JSONResponse):
            return found
        scorer, traced = found
    thr = getattr(scorer, "threshold", None) if profile is not None else service.model_info["threshold"]
    thr = thr if threshold is None else float(threshold)
    try:
        check_threshold(thr)
    except SpecError as e:
        return _error_json(400, str(e))
    try:
        parts = await read_multipart(request.headers.get("content-type"), request.headers.get("content-length"),
                                     request.stream(), max_bytes=int(s.max_upload_bytes),
                                     max_parts=int(s.queue_size) + 16, idle_timeout_s=s.upload_idle_timeout_s,
                                     total_timeout_s=s.upload_total_timeout_s)
    except UploadError as e:
        return _error_json(e.status, e.message, headers=e.headers)
    files = [p for p in parts if p.filename is not None or p.name in FILE_FIELDS]
    del parts
    if not files:
        return _error_json(400, "no files in the request: send images in the multipart field 'files'")
    try:
        body, status = await service.predict(files, thr, overlay, scorer=scorer, traced=traced)
    except ServiceError as e:
        return _error_json(e.status, e.detail, headers=e.headers)
    return body if status == 200 else JSONResponse(body, status_code=status)


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
