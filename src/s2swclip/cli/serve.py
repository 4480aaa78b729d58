"""``s2swclip serve``: the web page and HTTP API."""

from __future__ import annotations

import sys

from ..errors import S2SWError, safe_text
from ..serve.limits import DEFAULT_HEADER_TIMEOUT_S, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_INFLIGHT_BYTES
from .options import FLAGS as OPTIONS_FLAGS
from .options import add_exported_arg, add_few_shot_args, add_heatmap_arg, add_model_args, detector, exported_model, threshold_of
from .profile import add_profiles_limits
from .types import batch_count, finite, float_range, int_range, mega, port


# the library's field names -> this command's flags (S2SWError.with_flags): the one table of
# cli/options.py (the model, the exported model, the profiles) and the service's own fields
FLAGS: dict[str, str | None] = {**OPTIONS_FLAGS,
    "max_connections": "--max-connections", "header_timeout_s": "--header-timeout", "max_batch": "--max-batch",
    "batch_wait_ms": "--batch-wait-ms", "max_wait_ms": "--batch-wait-ms", "queue_size": "--queue-size",
    "max_upload_bytes": "--max-upload-mb", "max_inflight_bytes": "--max-inflight-mb", "max_pixels": "--max-mpx",
    "max_inflight_pixels": "--max-inflight-mpx", "upload_idle_timeout_s": "--upload-timeout",
}


def add_parser(sub) -> None:
    """Register the ``serve`` command."""
    p = sub.add_parser("serve", help="web page and HTTP API for inspection")
    add_model_args(p)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default loopback; others need a token, see --token)")
    p.add_argument("--port", type=port, default=8000, help="TCP port (default 8000; 0: any free port)")
    p.add_argument("--token", default=None,
                   help="bearer token required by the API (default: $S2SWCLIP_TOKEN; prefer the variable)")
    p.add_argument("--allow-host", action="append", metavar="NAME",
                   help="extra Host name the server answers to (repeatable; '*' for any, behind a proxy)")
    p.add_argument("--threshold", type=finite)
    p.add_argument("--save", default=None, help="save uploads and results under this folder")
    p.add_argument("--save-max-mb", type=mega, default=1000.0,
                   help="most megabytes the --save folder may hold (default 1000)")
    p.add_argument("--max-batch", type=batch_count, default=8, help="largest micro-batch")
    p.add_argument("--batch-wait-ms", type=float_range(0, 10_000), default=10.0,
                   help="micro-batching wait, 0 to 10000 ms (default 10)")
    p.add_argument("--queue-size", type=int_range(1, 65_536), default=64, help="pending images before answering 503")
    p.add_argument("--max-upload-mb", type=mega, default=20.0, help="largest request body")
    p.add_argument("--max-inflight-mb", type=mega, default=DEFAULT_MAX_INFLIGHT_BYTES / 1e6,
                   help=f"request-body megabytes held at once by all requests together; more are answered 503 "
                        f"(memory budget, default {DEFAULT_MAX_INFLIGHT_BYTES / 1e6:g})")
    p.add_argument("--max-mpx", type=mega, default=40.0, help="largest image, in megapixels")
    p.add_argument("--max-inflight-mpx", type=mega, default=64.0,
                   help="decoded megapixels held at once by all requests together (memory budget)")
    p.add_argument("--upload-timeout", type=float_range(0, 3600, lo_open=True), default=30.0,
                   help="seconds without data before a stalled upload is answered 408")
    p.add_argument("--max-connections", type=int_range(1, 100_000), default=DEFAULT_MAX_CONNECTIONS,
                   help=f"open connections at most; one more closes the one waiting longest for its request "
                        f"headers (default {DEFAULT_MAX_CONNECTIONS})")
    p.add_argument("--header-timeout", type=float_range(0, 600, lo_open=True), default=DEFAULT_HEADER_TIMEOUT_S,
                   help=f"seconds a connection has to send its request headers (default {DEFAULT_HEADER_TIMEOUT_S:g})")
    add_few_shot_args(p, max_references=False)  # its --max-references is the profiles' (add_profiles_limits)
    add_heatmap_arg(p)
    add_exported_arg(p)
    p.add_argument("--profiles", metavar="DIR",
                   help="product profiles folder: /v1/profiles routes, /v1/predict?profile=NAME (created when missing)")
    add_profiles_limits(p)
    p.set_defaults(func=cmd_serve)


def serve_settings(args, recorded_threshold: float | None = None):
    """The :class:`~s2swclip.specs.ServeSettings` of the command's options (``recorded_threshold``:
    an exported model's, used without ``--threshold``)."""
    from ..specs import ServeSettings

    return ServeSettings(threshold=threshold_of(args, recorded_threshold), save_dir=args.save,
                         save_max_bytes=int(args.save_max_mb * 1e6), max_batch=args.max_batch,
                         batch_wait_ms=args.batch_wait_ms, queue_size=args.queue_size,
                         max_upload_bytes=int(args.max_upload_mb * 1e6), max_pixels=int(args.max_mpx * 1e6),
                         max_inflight_pixels=int(args.max_inflight_mpx * 1e6),
                         max_inflight_bytes=int(args.max_inflight_mb * 1e6),
                         upload_idle_timeout_s=args.upload_timeout, warmup=False, heatmap_scale=args.heatmap_scale)


def build_serve_app(args):
    """The service app for the ``serve`` command's arguments (loads the model)."""
    from ..serve.app import create_app
    from ..serve.security import SecuritySettings, resolve_token

    security = SecuritySettings(token=resolve_token(args.token), host=args.host,
                                allow_hosts=tuple(args.allow_host or ()))
    if args.profiles is not None and args.model is not None:
        from .profile import exported_model_refusal

        raise S2SWError(f"--profiles needs the PyTorch detector (profiles share its backbone): "
                        f"{exported_model_refusal(args.model)}")
    settings = serve_settings(args)  # checked before the (slow) model load
    model = exported_model(args) if args.model is not None else detector(args)
    warm_up(model)
    if settings.threshold is None and getattr(model, "threshold", None) is not None:
        settings = serve_settings(args, model.threshold)  # the one recorded at export
    return create_app(model, settings, security=security, profiles=_profiles_service(args, model))


def warm_up(model) -> None:
    """One dummy batch before the server starts, so the first request is not slow, and a model
    that cannot score (a graph that never ends: ``--inference-timeout``; a runtime failure) ends
    the command with one error line instead of a failed server start-up."""
    import numpy as np

    if hasattr(model, "score"):  # an exported model: stay torch-free
        scorer = model
    else:
        from ..inference.scorers import as_scorer

        scorer = as_scorer(model)
    size = int(scorer.image_size)
    scorer.score(np.zeros((1, 3, size, size), np.float32))


def _profiles_service(args, model):
    """The profiles of ``--profiles DIR`` on the service's detector (None without the flag)."""
    if args.profiles is None:
        return None
    from ..profiles import ProfileStore
    from ..serve.profiles_routes import ProfilesService

    return ProfilesService(ProfileStore(args.profiles, model, max_profiles=args.max_profiles,
                                        max_references=args.max_references))


def cmd_serve(args) -> int:
    try:
        return _serve(args)
    except S2SWError as e:  # the library names fields; the command line shows their flags
        raise S2SWError(e.with_flags(FLAGS)) from None


def _serve(args) -> int:
    from ..serve.app import bind_socket, run_server
    from ..serve.limits import ConnectionLimits
    from ..serve.security import exposure_warning, resolve_token

    limits = ConnectionLimits(max_connections=args.max_connections, header_timeout_s=args.header_timeout)
    limits.check()
    if args.max_upload_mb > args.max_inflight_mb:
        raise S2SWError(f"--max-upload-mb {args.max_upload_mb:g} is more than --max-inflight-mb "
                        f"{args.max_inflight_mb:g}: no upload of that size could ever be accepted; raise "
                        f"--max-inflight-mb")
    sock = bind_socket(args.host, args.port)  # before the (slow) model load: a busy port fails fast
    try:
        token = resolve_token(args.token)
        warning = exposure_warning(args.host, token)
        if warning:
            print(warning, file=sys.stderr)
        app = build_serve_app(args)
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        backbone = safe_text(app.state.model_info["backbone"])  # a manifest's or a file's name
        print(f"s2swclip: serving {backbone} on http://{shown}:{port}/ (OpenAPI "
              f"schema at /openapi.json{', bearer token required' if token else ''}); Ctrl+C stops", file=sys.stderr)
        run_server(app, sock, limits)
    finally:
        sock.close()
    return 0
