"""``s2swclip serve``: one process, one detector, a REST API and an inspection web page.

Endpoints (OpenAPI schema at ``/openapi.json``, interactive docs at ``/docs``):

* ``POST /v1/predict`` -- multipart form, one or more files (field ``files``). Per file: name,
  anomaly score, decision (when a threshold is set), heatmap overlay PNG (base64) and timing;
  a file that is not an image, is corrupt or has too many pixels gets an ``error`` entry and
  the others are still scored. Status 200 when at least one file was scored; when none was,
  413 if a file was over the pixel limit, else 422 -- the body still lists every file.
  Request-level answers: 413 (body over ``--max-upload-mb``, more files than the queue
  holds), 503 (inference queue full, ``Retry-After: 1``), 400 (not multipart, no files).
* ``GET /v1/health`` -- liveness plus queue statistics.
* ``GET /v1/model`` -- backbone, weights, prompts checkpoint, image size, precision, threshold
  and the serving limits.
* ``GET /`` -- the inspection page (``static/``; no external assets).

Every image of every request goes through one :class:`~s2swclip.serve.batcher.MicroBatcher`,
so images that arrive together are scored in one ``predict`` call, from one worker thread.
Nothing is written to disk unless ``save_dir`` is given; then originals, overlays and a
``results.jsonl`` log go under it with sanitised, unique names.
"""

from __future__ import annotations

import base64
import json
import math
import os
import re
import threading
import time
import uuid
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from ..errors import S2SWError

try:
    from fastapi import FastAPI, Request
    from fastapi.responses import FileResponse, JSONResponse
    from fastapi.staticfiles import StaticFiles
    from starlette.concurrency import run_in_threadpool
except ImportError:  # pragma: no cover - depends on the installation
    raise S2SWError("serving needs FastAPI, uvicorn and python-multipart: "
                    "pip install 's2swclip[serve]'") from None

from ..predict import overlay_png
from .batcher import BatcherClosed, MicroBatcher, QueueFull
from .upload import ImageRejected, Part, UploadError, decode_image, read_multipart

DEFAULT_MAX_UPLOAD_BYTES = 20_000_000
DEFAULT_MAX_PIXELS = 40_000_000
FILE_FIELDS = ("files", "file", "images", "image")

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
                            "description": "one or more image files (PNG, JPEG, BMP, TIFF, WebP, ...)",
                        }
                    },
                }
            }
        },
    },
    "responses": {
        "413": {"description": "request body, file count or image pixels over the limits"},
        "422": {"description": "no file could be scored (not images / corrupt); body lists why"},
        "503": {"description": "inference queue full; retry later"},
    },
}


# ------------------------------------------------------------------------------------ helpers
def sanitise_name(name: str | None, max_len: int = 80) -> str:
    """A file-name stem safe on any file system: ``[A-Za-z0-9._-]`` only, no leading dots,
    no directory parts, at most ``max_len`` characters; ``image`` when nothing is left."""
    base = re.split(r"[\\/]", name or "")[-1]
    stem = base.rsplit(".", 1)[0] if "." in base.strip(".") else base
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._-")
    stem = re.sub(r"\.{2,}", ".", stem)[:max_len].strip("._-")
    return stem or "image"


_EXT = {"jpeg": ".jpg", "png": ".png", "bmp": ".bmp", "tiff": ".tif", "webp": ".webp", "gif": ".gif",
        "ppm": ".ppm", "mpo": ".jpg"}


def _jsonable(v: Any) -> Any:
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    return str(v)


class _Saver:
    """Writes originals, overlays and a JSON-lines log under one folder, never outside it."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser().resolve()
        try:
            (self.root / "uploads").mkdir(parents=True, exist_ok=True)
            (self.root / "overlays").mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise S2SWError(f"cannot create the --save folder {self.root}: {exc.strerror or exc}") from None
        self._lock = threading.Lock()

    def _path(self, sub: str, name: str) -> Path:
        p = (self.root / sub / name).resolve()
        if p.parent != self.root / sub:  # defence in depth: sanitised names never escape
            raise ValueError(f"refusing to write outside {self.root}: {name!r}")
        return p

    def save(self, request_id: str, index: int, filename: str | None, fmt: str, data: bytes,
             overlay: bytes | None, record: dict) -> dict:
        stem = f"{request_id}_{index:02d}_{sanitise_name(filename)}"
        up = self._path("uploads", stem + _EXT.get(fmt, ".bin"))
        with open(up, "xb") as f:
            f.write(data)
        out = {"upload": str(up.relative_to(self.root))}
        if overlay is not None:
            ov = self._path("overlays", stem + ".png")
            with open(ov, "xb") as f:
                f.write(overlay)
            out["overlay"] = str(ov.relative_to(self.root))
        line = json.dumps(dict(record, saved=out)) + "\n"
        with self._lock, open(self.root / "results.jsonl", "a", encoding="utf-8") as f:
            f.write(line)
        return out


def _error_json(status: int, detail: str, headers: dict | None = None, **extra):
    return JSONResponse({"detail": detail, **extra}, status_code=status, headers=headers)


# --------------------------------------------------------------------------------------- app
def create_app(
    detector,
    *,
    threshold: float | None = None,
    save_dir: str | os.PathLike | None = None,
    max_batch: int = 8,
    batch_wait_ms: float = 10.0,
    queue_size: int = 64,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    image_size: int | None = None,
    warmup: bool = False,
):
    """Build the FastAPI app around a loaded detector (anything with ``predict``, ``config``
    and ``info`` like :class:`~s2swclip.model.detector.S2SWDetector`).

    Args:
        threshold: decision threshold (``anomalous = score > threshold``); None: no decision.
        save_dir: write uploads, overlays and ``results.jsonl`` here; None: write nothing.
        max_batch, batch_wait_ms, queue_size: micro-batching (see :class:`MicroBatcher`).
        max_upload_bytes: largest request body; max_pixels: largest image (width x height).
        image_size: model input side (default: the detector's configured size).
        warmup: run one dummy batch when the app starts (first real request is not slow).
    """
    from .. import __version__
    from ..data.dataset import preprocess_image

    for name, value, lo in (("max_batch", max_batch, 1), ("queue_size", queue_size, 1),
                            ("max_upload_bytes", max_upload_bytes, 1), ("max_pixels", max_pixels, 1)):
        if int(value) < lo:
            raise S2SWError(f"{name} must be at least {lo}, got {value}")
    if batch_wait_ms < 0:
        raise S2SWError(f"batch wait must be >= 0 ms, got {batch_wait_ms}")
    if threshold is not None and not math.isfinite(float(threshold)):
        raise S2SWError(f"threshold must be a finite number, got {threshold}")
    size = int(image_size or detector.config.image_size)
    saver = _Saver(save_dir) if save_dir is not None else None

    def run_batch(tensors: list[torch.Tensor]) -> list[tuple[float, torch.Tensor]]:
        out = detector.predict(torch.stack(tensors))
        scores = out.image_scores.detach().float().cpu()
        maps = out.anomaly_maps.detach().float().cpu()
        return [(float(scores[i]), maps[i]) for i in range(len(tensors))]

    batcher = MicroBatcher(run_batch, max_batch=max_batch, max_wait_ms=batch_wait_ms,
                           queue_size=queue_size, name="s2sw-inference")
    started = time.time()

    info = dict(getattr(detector, "provenance", {}) or {})
    device = getattr(detector, "device", None)
    model_info = _jsonable({
        "backbone": info.get("backbone"),
        "weights": info.get("weights"),
        "prompts": info.get("prompts"),
        "prompts_format": info.get("prompts_format"),
        "image_size": size,
        "precision": getattr(detector.config, "precision", None),
        "device": None if device is None else str(device),
        "threshold": None if threshold is None else float(threshold),
        "untrained_prompts": info.get("prompts") is None,
        "limits": {"max_batch": int(max_batch), "batch_wait_ms": float(batch_wait_ms),
                   "queue_size": int(queue_size), "max_upload_bytes": int(max_upload_bytes),
                   "max_pixels": int(max_pixels)},
        "save": saver is not None,
        "version": __version__,
    })

    @asynccontextmanager
    async def lifespan(app):
        if warmup:
            dummy = torch.zeros(3, size, size)
            await batcher.run([dummy])
        yield
        await run_in_threadpool(batcher.close)

    app = FastAPI(
        title="S2SWCLIP inspection service",
        version=__version__,
        description="Zero-shot visual anomaly detection: upload images, get anomaly scores and heatmaps.",
        lifespan=lifespan,
    )
    app.state.batcher = batcher
    app.state.model_info = model_info
    app.state.save_root = None if saver is None else saver.root

    static_dir = resources.files("s2swclip.serve") / "static"
    page_headers = {
        "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; "
                                   "style-src 'self'; script-src 'self'; connect-src 'self'",
        "X-Content-Type-Options": "nosniff",
        "Cache-Control": "no-cache",
    }

    # ------------------------------------------------------------------------------ page
    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(str(static_dir / "index.html"), media_type="text/html", headers=page_headers)

    app.mount("/static", StaticFiles(directory=str(static_dir)), name="static")

    # ------------------------------------------------------------------------------- API
    @app.get("/v1/health", tags=["service"], summary="Liveness and queue statistics")
    async def health():
        body = {
            "status": "ok" if batcher.alive else "unavailable",
            "uptime_s": round(time.time() - started, 3),
            "queue": {"pending": batcher.pending, "capacity": batcher.queue_size},
            "batches": batcher.batches,
            "images_scored": batcher.items,
            "rejected_queue_full": batcher.rejected,
            "last_error": batcher.last_error,
        }
        return JSONResponse(body, status_code=200 if batcher.alive else 503)

    @app.get("/v1/model", tags=["service"], summary="The loaded model and the serving settings")
    async def model():
        return model_info

    def prepare(part: Part) -> dict:
        t = time.perf_counter()
        try:
            img, fmt = decode_image(part.data, max_pixels)
            tensor = preprocess_image(img, size)
        except ImageRejected as e:
            return {"error": e.message, "error_code": e.code}
        except S2SWError as e:
            return {"error": str(e), "error_code": "corrupt"}
        return {"image": img, "format": fmt, "tensor": tensor, "decode_ms": (time.perf_counter() - t) * 1000}

    def finish(entries: list[dict], want_overlay: bool, request_id: str) -> None:
        for e in entries:
            if "amap" not in e:
                continue
            t = time.perf_counter()
            png = None
            if want_overlay or saver is not None:
                png, _, _ = overlay_png(e["image"], e["amap"], size)
            e["overlay_ms"] = (time.perf_counter() - t) * 1000
            e["png"] = png if want_overlay else None
            if saver is not None:
                record = {"time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
                          "filename": e["part"].filename, "score": e["score"]}
                e["saved"] = saver.save(request_id, e["index"], e["part"].filename, e["format"],
                                        bytes(e["part"].data), png, record)

    @app.post("/v1/predict", tags=["inspection"], summary="Score one or more images",
              openapi_extra=_PREDICT_BODY)
    async def predict(request: Request, threshold: float | None = None, overlay: bool = True):
        """Score uploaded images (multipart field ``files``, repeatable).

        Query parameters: ``threshold`` overrides the server's decision threshold for this
        request; ``overlay=false`` leaves the heatmap PNGs out (faster, smaller answers).
        """
        t0 = time.perf_counter()
        thr = model_info["threshold"] if threshold is None else float(threshold)
        if thr is not None and not math.isfinite(thr):
            return _error_json(400, f"threshold must be a finite number, got {threshold}")
        try:
            parts = await read_multipart(request.headers.get("content-type"),
                                         request.headers.get("content-length"), request.stream(),
                                         max_bytes=int(max_upload_bytes), max_parts=int(queue_size) + 16)
        except UploadError as e:
            return _error_json(e.status, e.message)
        files = [p for p in parts if p.filename is not None or p.name in FILE_FIELDS]
        if not files:
            return _error_json(400, "no files in the request: send images in the multipart field 'files'")
        if len(files) > batcher.queue_size:
            return _error_json(413, f"{len(files)} files in one request, more than the inference queue holds "
                                    f"({batcher.queue_size}, --queue-size); split the upload")
        entries: list[dict] = []
        for i, p in enumerate(files):
            e = await run_in_threadpool(prepare, p)
            e.update(index=i, part=p)
            entries.append(e)
        good = [e for e in entries if "tensor" in e]
        if good:
            try:
                results = await batcher.run([e["tensor"] for e in good])
            except QueueFull as exc:
                return _error_json(503, str(exc), headers={"Retry-After": "1"})
            except BatcherClosed as exc:
                return _error_json(503, f"{exc}; retry later", headers={"Retry-After": "1"})
            except Exception as exc:  # noqa: BLE001 - a model failure is the server's error
                return _error_json(500, f"inference failed: {type(exc).__name__}: {exc}")
            for e, ((score, amap), binfo) in zip(good, results):
                e.update(score=score, amap=amap, batch=binfo)
            request_id = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S") + "_" + uuid.uuid4().hex[:8]
            try:
                await run_in_threadpool(finish, good, overlay, request_id)
            except OSError as exc:
                return _error_json(500, f"cannot save results under {saver.root if saver else '?'}: {exc}")
        total_ms = (time.perf_counter() - t0) * 1000
        out = []
        for e in entries:
            row: dict[str, Any] = {"index": e["index"], "filename": e["part"].filename or e["part"].name}
            if "score" not in e:
                row.update(ok=False, error=e["error"], error_code=e["error_code"])
                out.append(row)
                continue
            row.update(ok=True, score=e["score"],
                       anomalous=None if thr is None else bool(e["score"] > thr),
                       width=e["image"].width, height=e["image"].height,
                       overlay_png=None if e["png"] is None else base64.b64encode(e["png"]).decode("ascii"),
                       timing_ms={"decode": round(e["decode_ms"], 3), "queue": round(e["batch"].queue_ms, 3),
                                  "inference": round(e["batch"].run_ms, 3), "batch_size": e["batch"].batch_size,
                                  "overlay": round(e["overlay_ms"], 3), "request_total": round(total_ms, 3)})
            if "saved" in e:
                row["saved"] = e["saved"]
            out.append(row)
        body = {"threshold": thr, "image_size": size, "n_scored": len(good),
                "n_failed": len(entries) - len(good), "results": out,
                "timing_ms": {"total": round(total_ms, 3)}}
        if good:
            return body
        too_big = any(e.get("error_code") == "too_many_pixels" for e in entries)
        status = 413 if too_big else 422
        first = next(e for e in entries if "error" in e and (not too_big or e["error_code"] == "too_many_pixels"))
        detail = f"no image could be scored: {first['part'].filename or first['part'].name}: {first['error']}"
        return JSONResponse(dict(body, detail=detail), status_code=status)

    return app


# ------------------------------------------------------------------------------------- serve
def build_app_from_args(args):
    """Load the detector named by the ``serve`` command's arguments and build the app."""
    from ..api import load_detector

    weights = args.weights
    if weights is not None and str(weights).lower() in ("none", "random"):
        weights = None
    det = load_detector(args.backbone, weights, getattr(args, "prompts", None), image_size=args.image_size,
                        device=args.device, precision=args.precision, preset=args.preset,
                        cache_dir=getattr(args, "cache_dir", None))
    if args.max_upload_mb is not None and args.max_upload_mb <= 0:
        raise S2SWError(f"--max-upload-mb must be positive, got {args.max_upload_mb}")
    return create_app(det, threshold=args.threshold, save_dir=args.save, max_batch=args.max_batch,
                      batch_wait_ms=args.batch_wait_ms, queue_size=args.queue_size,
                      max_upload_bytes=int(args.max_upload_mb * 1_000_000), max_pixels=args.max_pixels,
                      warmup=True)


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


def serve(args) -> None:
    """Entry point of ``s2swclip serve``: bind, load the detector once, then run uvicorn."""
    import sys

    try:
        import uvicorn
    except ImportError:
        raise S2SWError("serving needs FastAPI and uvicorn: pip install 's2swclip[serve]'") from None
    sock = bind_socket(args.host, args.port)  # before the (slow) model load: a busy port fails fast
    try:
        app = build_app_from_args(args)
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        print(f"s2swclip: serving {app.state.model_info['backbone']} on http://{shown}:{port}/ "
              f"(API docs at /docs, OpenAPI schema at /openapi.json); Ctrl+C stops", file=sys.stderr)
        config = uvicorn.Config(app, log_level="info", access_log=False, timeout_graceful_shutdown=10)
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()


class BackgroundServer:
    """Run an app with uvicorn in a daemon thread on a loopback port (tests, benchmarks).

    ``with BackgroundServer(app) as url: ...`` -- the port is picked by the OS (free port).
    """

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
        import socket

        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.host, self.port = self.sock.getsockname()[:2]
        self.url = f"http://{self.host}:{self.port}"
        config = uvicorn.Config(app, log_level=log_level, access_log=False, lifespan="on",
                                timeout_keep_alive=30, backlog=256)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       name="s2sw-uvicorn", daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.time() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.time() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self.url

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.sock.close()
