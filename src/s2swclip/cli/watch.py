"""``s2swclip watch``: an inspection station that scores every image dropped into a folder
exactly once (:mod:`s2swclip.inference.watch`)."""

from __future__ import annotations

import hashlib
import os
import shlex
import signal
import sys
from pathlib import Path

from ..errors import S2SWError
from .options import (add_model_args, add_run_args, check_exported_args, exported_model, load_detector_of,
                      set_references, torch_threads, threshold_of, weights_arg)
from .types import finite, fraction, non_negative, positive, positive_int


def add_parser(sub) -> None:
    """Register the ``watch`` command."""
    p = sub.add_parser("watch", help="inspection station: score every image dropped into a folder, exactly once",
                       description="Watch IN and score each complete image file once: results appended to "
                                   "OUT/results.jsonl, overlays under OUT/overlays/, a crash-safe ledger in OUT.")
    p.add_argument("input", metavar="IN", help="folder the camera, PLC or upload writes images into")
    p.add_argument("--out", required=True, help="output folder: results.jsonl, overlays/, ledger.sqlite3, sorted files")
    add_model_args(p)
    p.add_argument("--threshold", type=finite, help="flag images scoring above this")
    p.add_argument("--calibrate", metavar="DIR", help="folder of known-good images: the threshold becomes their "
                                                      "split-conformal quantile for --fpr")
    p.add_argument("--fpr", type=fraction, default=0.01, help="false-positive rate when calibrating (default 0.01)")
    p.add_argument("--recursive", action="store_true", help="watch the sub-folders of IN too")
    p.add_argument("--settle-ms", type=non_negative, default=500.0,
                   help="a file not renamed into IN is complete once its size and mtime stayed the same this long "
                        "(default 500)")
    p.add_argument("--rescan-s", type=positive, default=5.0,
                   help="seconds between full rescans of IN, the safety net for lost events (default 5)")
    p.add_argument("--sort", action="store_true",
                   help="move each file into OUT/ok, OUT/anomalous or OUT/error once its result is durable "
                        "(needs a threshold)")
    p.add_argument("--sort-copy", action="store_true", help="with --sort: copy instead of move")
    p.add_argument("--on-anomaly", metavar="CMD",
                   help="run CMD (split like a shell line, no shell) for each anomalous image, its result JSON on "
                        "stdin; in the background, failures logged")
    p.add_argument("--on-anomaly-timeout", type=positive, default=30.0, help="seconds CMD may run (default 30)")
    p.add_argument("--exit-when-idle", type=non_negative, metavar="SECONDS",
                   help="exit after SECONDS with nothing to do (scripts, tests); default: watch until SIGTERM/Ctrl-C")
    p.add_argument("--max-queue", type=positive_int, default=256, help="files taken into work at a time (default 256)")
    add_run_args(p)
    p.set_defaults(func=cmd_watch)


def check_folders(in_dir: str, out_dir: str, recursive: bool) -> tuple[Path, Path]:
    """IN exists and is a folder, OUT is writable and neither equal to nor inside IN's tree
    the wrong way round. Raises S2SWError."""
    from ..fileio import check_output_dir

    src = Path(os.path.abspath(os.path.expanduser(in_dir)))
    if not src.is_dir():
        raise S2SWError(f"IN {in_dir} is {'not a folder' if src.exists() else 'missing'}: give the folder to watch")
    out = check_output_dir(out_dir)
    dst = Path(os.path.abspath(out))
    real_src, real_dst = Path(os.path.realpath(src)), Path(os.path.realpath(dst))
    if real_src == real_dst or real_dst in real_src.parents:
        raise S2SWError(f"IN {in_dir} is {'the same folder as' if real_src == real_dst else 'inside'} --out {out_dir}: "
                        f"results and sorted files would be watched as new images; choose folders apart")
    if recursive and real_src in real_dst.parents:
        raise S2SWError(f"--out {out_dir} is inside IN {in_dir} and --recursive would watch it; choose folders apart")
    return src, dst


def file_digest(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return "sha256:" + h.hexdigest()


def _value_or_digest(value: str | None) -> str | None:
    """A file argument by its content, a name (a pretrained tag, a preset backbone) as it is."""
    if value is None:
        return None
    return file_digest(value) if os.path.isfile(value) else str(value)


def fingerprint(args, scorer, threshold: float | None, reference_files: list[str]) -> dict:
    """What fixes the results: the model's files by content, its settings, the threshold."""
    if args.model is not None:
        from ..deploy.runtime import MANIFEST_NAME

        return {"exported model": file_digest(Path(args.model) / MANIFEST_NAME), "threshold": threshold}
    refs = None
    if reference_files:
        h = hashlib.sha256()
        for f in reference_files:
            h.update(file_digest(f).encode())
        refs = {"files": "sha256:" + h.hexdigest(), "shots": args.shots, "few_shot_weight": args.few_shot_weight,
                "coreset": args.coreset}
    return {"backbone": _value_or_digest(args.backbone), "weights": _value_or_digest(weights_arg(args.weights)),
            "prompts": _value_or_digest(args.prompts), "image size": scorer.image_size, "precision": args.precision,
            "preset": args.preset, "references": refs, "threshold": threshold}


def cmd_watch(args) -> int:
    from ..inference.inputs import collect_inputs

    if args.sort_copy and not args.sort:
        raise S2SWError("--sort-copy only applies with --sort")
    if args.on_anomaly is not None:
        try:
            argv = shlex.split(args.on_anomaly)
        except ValueError as e:
            raise S2SWError(f"--on-anomaly {args.on_anomaly!r} cannot be split into a command line: {e}") from None
        if not argv:
            raise S2SWError("--on-anomaly is empty: give the command to run")
    if args.model is not None:
        check_exported_args(args)
    src, out = check_folders(args.input, args.out, args.recursive)
    if args.calibrate is not None:
        collect_inputs([args.calibrate])
    if args.reference is not None:
        collect_inputs([args.reference])
    with torch_threads(args):
        scorer, reference_files = _scorer(args)
        return _watch(args, scorer, reference_files, src, out)


def _scorer(args):
    if args.model is not None:
        return exported_model(args), []
    from ..inference.scorers import as_scorer

    det = load_detector_of(args)
    files = set_references(det, args)
    return as_scorer(det), [str(f) for f in files]


def _watch(args, scorer, reference_files, src: Path, out: Path) -> int:
    from ..inference.local import calibrate
    from ..inference.pipeline import InferencePipeline
    from ..inference.watch import WatchOptions, WatchStation

    pipe = InferencePipeline(scorer, batch_size=args.batch_size, threshold=threshold_of(args, getattr(scorer, "threshold", None)),
                             max_pixels=int(args.max_mpx * 1e6), decode_workers=args.decode_workers,
                             model_streams=args.model_streams)
    if args.calibrate is not None:
        cal = calibrate(pipe, args.calibrate, args.fpr)
        pipe.threshold = cal.threshold
        print(cal.describe(), file=sys.stderr)
    if (args.sort or args.on_anomaly) and pipe.threshold is None:
        raise S2SWError(f"{'--sort' if args.sort else '--on-anomaly'} needs a verdict: give --threshold T or "
                        f"--calibrate DIR (or an exported model with a threshold)")
    options = WatchOptions(recursive=args.recursive, settle_ms=args.settle_ms, rescan_s=args.rescan_s, sort=args.sort,
                           sort_copy=args.sort_copy, on_anomaly=args.on_anomaly,
                           on_anomaly_timeout=args.on_anomaly_timeout, exit_when_idle=args.exit_when_idle,
                           overlays=not args.no_overlays, heatmap_scale=args.heatmap_scale, max_queue=args.max_queue)
    tty = sys.stderr if sys.stderr.isatty() and not args.quiet else None
    station = WatchStation(pipe, src, out, fingerprint(args, scorer, pipe.threshold, reference_files), options,
                           status_stream=tty)
    def stop(signum, frame):  # finish the batch in flight; a second Ctrl-C stops at once
        if station.stopping and signum == signal.SIGINT:
            raise KeyboardInterrupt
        station.request_stop()

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        stats = station.run()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    print(f"{stats.scored} scored, {stats.failed} failed, {stats.skipped} already done; results in "
          f"{out / 'results.jsonl'}")
    return 0
