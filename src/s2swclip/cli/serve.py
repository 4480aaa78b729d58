"""``s2swclip serve``: the web page and HTTP API."""

from __future__ import annotations

import sys

from ..errors import S2SWError
from .options import add_exported_arg, add_few_shot_args, add_heatmap_arg, add_model_args, detector, exported_model, threshold_of
from .profile import add_profiles_limits
from .types import finite, positive, positive_int


def add_parser(sub) -> None:
    """Register the ``serve`` command."""
    p = sub.add_parser("serve", help="web page and HTTP API for inspection")
    add_model_args(p)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default loopback; others need a token, see --token)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--token", default=None,
                   help="bearer token required by the API (default: $S2SWCLIP_TOKEN; prefer the variable)")
    p.add_argument("--allow-host", action="append", metavar="NAME",
                   help="extra Host name the server answers to (repeatable; '*' for any, behind a proxy)")
    p.add_argument("--threshold", type=finite)
    p.add_argument("--save", default=None, help="save uploads and results under this folder")
    p.add_argument("--save-max-mb", type=positive, default=1000.0,
                   help="most megabytes the --save folder may hold (default 1000)")
    p.add_argument("--max-batch", type=positive_int, default=8, help="largest micro-batch")
    p.add_argument("--batch-wait-ms", type=float, default=10.0, help="micro-batching wait")
    p.add_argument("--queue-size", type=positive_int, default=64, help="pending images before answering 503")
    p.add_argument("--max-upload-mb", type=positive, default=20.0, help="largest request body")
    p.add_argument("--max-mpx", type=positive, default=40.0, help="largest image, in megapixels")
    p.add_argument("--max-inflight-mpx", type=positive, default=64.0,
                   help="decoded megapixels held at once by all requests together (memory budget)")
    p.add_argument("--upload-timeout", type=positive, default=30.0,
                   help="seconds without data before a stalled upload is answered 408")
    add_few_shot_args(p)
    add_heatmap_arg(p)
    add_exported_arg(p)
    p.add_argument("--profiles", metavar="DIR",
                   help="product profiles folder: /v1/profiles routes, /v1/predict?profile=NAME (created when missing)")
    add_profiles_limits(p)
    p.set_defaults(func=cmd_serve)


def build_serve_app(args):
    """The service app for the ``serve`` command's arguments (loads the model)."""
    from ..serve.app import create_app
    from ..serve.security import SecuritySettings, resolve_token

    security = SecuritySettings(token=resolve_token(args.token), host=args.host,
                                allow_hosts=tuple(args.allow_host or ()))
    if args.profiles is not None and args.model is not None:
        raise S2SWError(f"--profiles needs the PyTorch detector (profiles share its backbone); "
                        f"drop --model {args.model}")
    model = exported_model(args) if args.model is not None else detector(args)
    profiles = _profiles_service(args, model)
    return create_app(model, profiles=profiles, threshold=threshold_of(args, model), save_dir=args.save,
                      save_max_bytes=int(args.save_max_mb * 1e6), max_batch=args.max_batch,
                      batch_wait_ms=args.batch_wait_ms, queue_size=args.queue_size,
                      max_upload_bytes=int(args.max_upload_mb * 1e6), max_pixels=int(args.max_mpx * 1e6),
                      max_inflight_pixels=int(args.max_inflight_mpx * 1e6), security=security,
                      upload_idle_timeout_s=args.upload_timeout, warmup=True,
                      heatmap_scale=args.heatmap_scale)


def _profiles_service(args, model):
    """The profiles of ``--profiles DIR`` on the service's detector (None without the flag)."""
    if args.profiles is None:
        return None
    from ..profiles import ProfileStore
    from ..serve.profiles_routes import ProfilesService

    return ProfilesService(ProfileStore(args.profiles, model, max_profiles=args.max_profiles,
                                        max_references=args.max_references))


def cmd_serve(args) -> int:
    from ..serve.app import bind_socket, run_server
    from ..serve.security import exposure_warning, resolve_token

    sock = bind_socket(args.host, args.port)  # before the (slow) model load: a busy port fails fast
    try:
        token = resolve_token(args.token)
        warning = exposure_warning(args.host, token)
        if warning:
            print(warning, file=sys.stderr)
        app = build_serve_app(args)
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        print(f"s2swclip: serving {app.state.model_info['backbone']} on http://{shown}:{port}/ (OpenAPI "
              f"schema at /openapi.json{', bearer token required' if token else ''}); Ctrl+C stops", file=sys.stderr)
        run_server(app, sock)
    finally:
        sock.close()
    return 0
