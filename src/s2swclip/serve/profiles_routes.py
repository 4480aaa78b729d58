"""The service's product profiles (``serve --profiles DIR``): routes under ``/v1/profiles`` and
the profile a ``POST /v1/predict?profile=NAME`` scores with.

* ``GET /v1/profiles`` -- ``{"profiles": [{"name", "version", "references", "threshold", ...}],
  "unusable": {name: problem}, "limits": {...}}``.
* ``GET /v1/profiles/{name}`` -- its manifest, bank size and reference thumbnails (PNG, base64).
* ``GET /v1/profiles/{name}/progress`` -- while a bank is being built: stage, done, total.
* ``POST /v1/profiles`` -- multipart: ``name``, good images in ``files``, optional
  ``calibration`` images with ``fpr`` (else an optional ``threshold``), optional
  ``few_shot_weight``. Builds the bank and saves version 1.
* ``POST /v1/profiles/{name}/references`` -- more good images (``files``): the next version.
* ``POST /v1/profiles/{name}/calibration`` -- good images (``files``) and ``fpr``: the threshold.
* ``DELETE /v1/profiles/{name}``.

Every profile scores on the service's one backbone (:class:`~s2swclip.profiles.ProfileScorer`;
a profile made with other prompts gets a detector sharing that backbone);
a change swaps the served :class:`~s2swclip.profiles.Profile` object only once the new version is
on disk, so a predict request scores with the old or the new bank, whole, and reports its
version. Uploads keep the service's byte and pixel budgets; banks are built one at a time.
Answers: 400 (invalid name or field), 404 (unknown profile), 409 (name taken), 413 (over the
byte, file, profile or reference limits), 422 (an image that cannot be used).
"""

from __future__ import annotations

import base64
import io
import logging
import math
import threading
from dataclasses import dataclass

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from ..data.images import decode_for_model
from ..errors import S2SWError
from ..profiles import (DiskSync, GoodImage, InvalidName, LiveProfiles, OverLimit, Profile, ProfileExists,
                        ProfileNotFound, ProfileScorer, ProfileStore, check_name)
from .upload import UploadError, read_multipart

log = logging.getLogger(__name__)

THUMBNAIL_SIDE = 96
_MAX_FIELD_CHARS = 200


class BadField(S2SWError):
    """A form field that is not a number in range (400)."""


_STATUS = ((InvalidName, 400), (BadField, 400), (ProfileNotFound, 404), (ProfileExists, 409), (OverLimit, 413))


def _files_body(required: list[str], extra: dict) -> dict:
    props = {"files": {"type": "array", "items": {"type": "string", "format": "binary"},
                       "description": "known-good images of the product"}, **extra}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {
        "schema": {"type": "object", "required": required, "properties": props}}}}}


_CREATE_BODY = _files_body(["name", "files"], {
    "name": {"type": "string", "description": "profile name: 1-64 ASCII letters, digits, '.', '_', '-'"},
    "calibration": {"type": "array", "items": {"type": "string", "format": "binary"},
                    "description": "other known-good images: the threshold from their scores"},
    "fpr": {"type": "number", "description": "false-positive rate of the calibration (default 0.01)"},
    "threshold": {"type": "number", "description": "a threshold, without calibration images"},
    "few_shot_weight": {"type": "number", "description": "weight of the references' map in [0, 1]"}})
_ADD_BODY = _files_body(["files"], {})
_CALIBRATE_BODY = _files_body(["files"], {"fpr": {"type": "number"}})


class ProfilesService:
    """The profiles a service holds: the store on disk, the served objects, build progress.

    Args:
        store: the :class:`ProfileStore` (its detector is the service's detector).
    """

    def __init__(self, store: ProfileStore):
        self.store = store
        self.problems: dict[str, str] = {}
        self.live = LiveProfiles()
        self.sync = DiskSync(store, self.live, self.problems)  # changes made by other processes
        self.sync.refresh()
        self._scorers: dict[str, ProfileScorer] = {}  # name -> scorer of the served Profile object
        self._thumbs: dict[str, tuple[Profile, list[str]]] = {}
        self._lock = threading.Lock()
        self.progress: dict[str, dict] = {}
        self.build_limiter = anyio.CapacityLimiter(1)

    async def refresh(self, name: str | None = None) -> None:
        """Load what another process changed on disk (``name``: that profile only; see
        :class:`~s2swclip.profiles.sync.DiskSync`): the check is a few ``stat`` calls, a load
        runs off the event loop."""
        stale = self.sync.stale(name)
        if stale:
            await run_in_threadpool(self.sync.update, stale)

    def scorer(self, name: str) -> ProfileScorer | None:
        """The scorer of the served version of ``name`` (one object per served
        :class:`Profile`, so requests for the same profile share micro-batches); None when there
        is no such profile."""
        profile = self.live.get(name)
        if profile is None:
            return None
        with self._lock:
            found = self._scorers.get(name)
            if found is None or found.profile is not profile:
                try:
                    found = self._scorers[name] = self.store.scorer(profile)
                except S2SWError as e:  # a profile's exported model folder changed since it was loaded
                    self.live.remove(name)
                    self.problems[name] = str(e)
                    return None
            return found

    def serve(self, profile: Profile) -> None:
        """Serve ``profile``, just written by this service (unless a later version of it was
        loaded from disk meanwhile)."""
        self.live.put(profile, unless_newer=True)
        self.problems.pop(profile.name, None)
        self.sync.mark(profile)

    def thumbnails(self, profile: Profile) -> list[str]:
        with self._lock:
            cached = self._thumbs.get(profile.name)
            if cached is not None and cached[0] is profile:
                return cached[1]
        folder = self.store.root / profile.name / f"v{profile.version:06d}"
        thumbs = []
        for entry in profile.manifest["images"]:
            d = decode_for_model((folder / entry["file"]).read_bytes(), 16, preview_side=THUMBNAIL_SIDE,
                                 max_pixels=self.store.max_pixels)
            buf = io.BytesIO()
            d.preview.save(buf, format="PNG")
            thumbs.append(base64.b64encode(buf.getvalue()).decode("ascii"))
        with self._lock:
            self._thumbs[profile.name] = (profile, thumbs)
        return thumbs

    def limits(self) -> dict:
        return {"max_profiles": self.store.max_profiles, "max_references": self.store.max_references}


def _error(status: int, detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status)


def _status_of(exc: S2SWError) -> int:
    return next((status for kind, status in _STATUS if isinstance(exc, kind)), 422)


@dataclass
class _Form:
    fields: dict[str, str]
    files: dict[str, list[GoodImage]]


def _number(form: _Form, key: str, lo: float, hi: float, default=None):
    text = form.fields.get(key)
    if text is None or text.strip() == "":
        return default
    try:
        value = float(text)
    except ValueError:
        raise BadField(f"field '{key}' must be a number, got {text[:40]!r}") from None
    if not math.isfinite(value) or not lo <= value <= hi:
        raise BadField(f"field '{key}' must be in [{lo}, {hi}], got {text[:40]!r}")
    return value


def profiles_router(service: ProfilesService, *, max_upload_bytes: int, idle_timeout_s: float,
                    total_timeout_s: float) -> APIRouter:
    """The ``/v1/profiles`` routes of ``service`` (see the module docstring)."""
    router = APIRouter(prefix="/v1/profiles", tags=["profiles"])
    max_parts = 2 * service.store.max_references + 8

    async def read_form(request: Request) -> _Form:
        parts = await read_multipart(request.headers.get("content-type"), request.headers.get("content-length"),
                                     request.stream(), max_bytes=int(max_upload_bytes), max_parts=max_parts,
                                     idle_timeout_s=idle_timeout_s, total_timeout_s=total_timeout_s)
        form = _Form({}, {})
        for p in parts:
            if p.filename is None and p.name not in ("files", "calibration"):
                form.fields[p.name] = bytes(p.data[:_MAX_FIELD_CHARS]).decode("utf-8", "replace")
            else:
                form.files.setdefault(p.name, []).append(GoodImage(p.filename or p.name, bytes(p.data)))
        return form

    _add_read_routes(router, service)
    _add_change_routes(router, service, read_form)
    return router


async def _change(service: ProfilesService, name: str, work) -> JSONResponse:
    """Run ``work(progress)`` (a store change) off the event loop, one build at a time; serve the
    new version it returns."""
    def progress(stage: str, done: int, total: int) -> None:
        service.progress[name] = {"stage": stage, "done": done, "total": total}

    try:
        service.progress[name] = {"stage": "queued", "done": 0, "total": 0}
        profile = await anyio.to_thread.run_sync(lambda: work(progress), limiter=service.build_limiter)
    except S2SWError as e:
        return _error(_status_of(e), str(e))
    finally:
        service.progress.pop(name, None)
    if isinstance(profile, tuple):
        profile = profile[0]
    service.serve(profile)
    return JSONResponse(_detail(service, profile), status_code=200)


def _add_read_routes(router: APIRouter, service: ProfilesService) -> None:
    """GET /v1/profiles, /v1/profiles/{name}, /v1/profiles/{name}/progress."""
    @router.get("", summary="The profiles this service holds")
    async def list_profiles():
        await service.refresh()
        return {"profiles": [p.summary() for p in service.live.all()], "unusable": dict(service.problems),
                "limits": service.limits()}

    @router.get("/{name}", summary="One profile: manifest, bank size, reference thumbnails")
    async def show_profile(name: str):
        await service.refresh(name)
        profile = service.live.get(name)
        if profile is None:
            return _error(404, f"no profile named {name[:64]!r}")
        return await run_in_threadpool(_detail, service, profile, True)

    @router.get("/{name}/progress", summary="Progress of the bank being built for a profile")
    async def progress_route(name: str):
        state = service.progress.get(name)
        return state if state is not None else _error(404, f"no bank is being built for {name[:64]!r}")



def _add_change_routes(router: APIRouter, service: ProfilesService, read_form) -> None:
    """POST /v1/profiles, /v1/profiles/{name}/references, /v1/profiles/{name}/calibration; DELETE."""
    @router.post("", summary="Create a profile from good images", openapi_extra=_CREATE_BODY)
    async def create_profile(request: Request):
        try:
            form = await read_form(request)
        except UploadError as e:
            return JSONResponse({"detail": e.message}, status_code=e.status, headers=e.headers)
        try:
            name = check_name(form.fields.get("name", ""))
            weight = _number(form, "few_shot_weight", 0.0, 1.0)
            threshold = _number(form, "threshold", -1e9, 1e9)
            fpr = _number(form, "fpr", 1e-6, 1 - 1e-6, 0.01)
        except S2SWError as e:
            return _error(400, str(e))
        if not form.files.get("files"):
            return _error(400, "no good images: send them in the multipart field 'files'")
        return await _change(service, name, lambda progress: service.store.create(
            name, form.files["files"], few_shot_weight=weight, threshold=threshold,
            calibration_images=form.files.get("calibration", []), fpr=fpr, progress=progress))

    @router.post("/{name}/references", summary="Add good images to a profile", openapi_extra=_ADD_BODY)
    async def add_references(name: str, request: Request):
        await service.refresh(name)
        if service.live.get(name) is None:
            return _error(404, f"no profile named {name[:64]!r}")
        try:
            form = await read_form(request)
        except UploadError as e:
            return JSONResponse({"detail": e.message}, status_code=e.status, headers=e.headers)
        if not form.files.get("files"):
            return _error(400, "no good images: send them in the multipart field 'files'")
        good = form.files["files"]
        return await _change(service, name, lambda progress: service.store.add_references(name, good, progress))

    @router.post("/{name}/calibration", summary="Threshold from good images at a false-positive rate",
                 openapi_extra=_CALIBRATE_BODY)
    async def calibrate(name: str, request: Request):
        await service.refresh(name)
        if service.live.get(name) is None:
            return _error(404, f"no profile named {name[:64]!r}")
        try:
            form = await read_form(request)
            fpr = _number(form, "fpr", 1e-6, 1 - 1e-6, 0.01)
        except UploadError as e:
            return JSONResponse({"detail": e.message}, status_code=e.status, headers=e.headers)
        except S2SWError as e:
            return _error(400, str(e))
        if not form.files.get("files"):
            return _error(400, "no calibration images: send them in the multipart field 'files'")
        good = form.files["files"]
        return await _change(service, name, lambda progress: service.store.calibrate(name, good, fpr, progress))

    @router.delete("/{name}", summary="Delete a profile")
    async def delete_profile(name: str):
        await service.refresh(name)
        if service.live.get(name) is None and name not in service.problems:
            return _error(404, f"no profile named {name[:64]!r}")
        try:
            await anyio.to_thread.run_sync(service.store.delete, name, limiter=service.build_limiter)
        except S2SWError as e:
            return _error(_status_of(e), str(e))
        service.live.remove(name)
        service.problems.pop(name, None)
        service.sync.forget(name)
        return {"deleted": name}


def _detail(service: ProfilesService, profile: Profile, thumbnails: bool = False) -> dict:
    body = dict(profile.summary(), manifest=profile.manifest)
    if thumbnails:
        body["thumbnails"] = service.thumbnails(profile)
    return body


async def predict_profile(service: ProfilesService | None, name: str):
    """``(scorer, extra response fields)`` for ``/v1/predict?profile=name`` (its current version
    on disk: see :meth:`ProfilesService.refresh`), or a 404 answer."""
    if service is not None:
        await service.refresh(name)
    scorer = None if service is None else service.scorer(name)
    if scorer is None:
        where = "" if service is not None else " (this service has no profiles: start it with --profiles DIR)"
        return _error(404, f"no profile named {name[:64]!r}{where}")
    return scorer, {"profile": scorer.profile.name, "profile_version": scorer.profile.version}
