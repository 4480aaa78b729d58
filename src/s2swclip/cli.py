"""The ``s2swclip`` command line: argument parsing only; each command calls one function.

User mistakes end with one line on stderr (``error: ...``) and exit status 2; no traceback.
Messages of the library (``logging``, logger ``s2swclip``) are shown on stderr: ``warning: ...``
for warnings, plain lines for progress and information (``--quiet``: warnings only).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path

from . import __version__
from .errors import S2SWError

EXIT_USER_ERROR = 2


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one ``error:`` line like every other user error."""

    def error(self, message):
        raise S2SWError(f"{message} (see '{self.prog} --help')")


# ------------------------------------------------------------------------------ value types
def _finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative(text: str) -> float:
    value = _finite(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text!r}")
    return value


def _positive(text: str) -> float:
    value = _finite(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text!r}")
    return value


def _fraction(text: str) -> float:
    value = _finite(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1), got {text!r}")
    return value


def _unit_interval(text: str) -> float:
    value = _finite(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text!r}")
    return value


def _share(text: str) -> float:
    value = _finite(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text!r}")
    return value


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


# ------------------------------------------------------------------------------- arguments
# defaults of the model options (also used to tell which ones were given next to --model)
_MODEL_DEFAULTS = {"backbone": "ViT-L-14-336", "weights": "openai", "prompts": None, "image_size": None,
                   "device": "cpu", "precision": "fp32", "preset": None, "cache_dir": None}


def _add_model_args(p: argparse.ArgumentParser, prompts: bool = True, torch_runtime: bool = True) -> None:
    """The model options; ``torch_runtime=False`` leaves out --device and --precision (export)."""
    from .model.config import PRECISIONS, PRESETS  # torch-free: --help and --model never load torch

    g = p.add_argument_group("model")
    g.add_argument("--backbone", default=_MODEL_DEFAULTS["backbone"],
                   help="open_clip model name or model-config JSON path (default: ViT-L-14-336)")
    g.add_argument("--weights", default=_MODEL_DEFAULTS["weights"],
                   help="pretrained tag (default: openai), weights file (.pt/.pth/.safetensors), "
                        "or 'none' for random weights")
    if prompts:
        g.add_argument("--prompts", default=None,
                       help="prompt checkpoint (.safetensors from 's2swclip train' or the authors' .pth)")
    g.add_argument("--image-size", type=_positive_int, default=None,
                   help="input side in pixels (default: preset's or 518)")
    if torch_runtime:
        g.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")
        g.add_argument("--precision", default="fp32", choices=PRECISIONS,
                       help="fp32 (faithful), bf16 (CPU/CUDA autocast) or fp16 (CUDA)")
    g.add_argument("--preset", default=None, choices=list(PRESETS),
                   help="protocol preset for the test-time values")
    g.add_argument("--cache-dir", default=None, help="download cache for pretrained weights")


def _add_heatmap_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--heatmap-scale", default="fixed", choices=("fixed", "image"),
                   help="overlay colours: fixed (default; one scale, centred on the threshold when there is "
                        "one, else the run's range; a normal image stays blue) or image (each map's own range)")


def _weights(value: str | None):
    return None if value is None or str(value).lower() in ("none", "random") else value


def _detector(args):
    det = _load_detector(args)
    _set_references(det, args)
    return det


def _load_detector(args):
    """The detector of the model options and the few-shot options (references not set yet)."""
    from .api import load_detector

    options = _few_shot_options(args)
    return load_detector(args.backbone, _weights(args.weights), getattr(args, "prompts", None),
                         image_size=args.image_size, device=args.device, precision=args.precision,
                         preset=args.preset, cache_dir=args.cache_dir,
                         untrained_ok=_references_only(args), **options)


# ----------------------------------------------------------------------- few-normal-shot mode
def _add_few_shot_args(p: argparse.ArgumentParser, protocol: bool = False) -> None:
    """predict/serve: ``--reference DIR [--shots K]``; test (``protocol``): ``--shots K
    --shot-seed S [S ...]``; both: ``--few-shot-weight W``, ``--coreset F``."""
    g = p.add_argument_group("few-shot (known-good reference images of the product)")
    if protocol:
        g.add_argument("--shots", type=_positive_int, metavar="K",
                       help="few-shot protocol: K normal references per class, drawn from the train split "
                            "(from the test normals, then excluded from scoring, when there is none)")
        g.add_argument("--shot-seed", type=_seed, nargs="+", metavar="S",
                       help="seed(s) of the draw (default 0); several seeds: mean +- std in the report")
    else:
        g.add_argument("--reference", metavar="DIR",
                       help="folder (or image files, glob) of known-good images, or a references .safetensors "
                            "file saved with det.save_references: turns the few-shot mode on")
        g.add_argument("--shots", type=_positive_int, metavar="K",
                       help="use the first K reference images (sorted by path; default: all)")
    g.add_argument("--few-shot-weight", type=_unit_interval, metavar="W",
                   help="weight of the few-shot map and score in [0, 1] (default 0.5); 1: references only, "
                        "no trained prompts needed")
    g.add_argument("--coreset", type=_share, metavar="F",
                   help="keep this fraction of each layer's reference tokens (greedy k-center): less memory "
                        "and time with many references")


def _few_shot_options(args) -> dict:
    """Detector options of the few-shot flags; refuses flags that would be ignored."""
    if not hasattr(args, "few_shot_weight"):
        return {}
    on = args.shots is not None if hasattr(args, "shot_seed") else args.reference is not None
    need = "--shots K" if hasattr(args, "shot_seed") else "--reference DIR"
    given = [flag for flag, value in (("--few-shot-weight", args.few_shot_weight), ("--coreset", args.coreset),
                                      ("--shot-seed", getattr(args, "shot_seed", None)),
                                      ("--shots", None if hasattr(args, "shot_seed") else args.shots))
             if value is not None]
    if given and not on:
        raise S2SWError(f"{given[0]} only applies to the few-shot mode: add {need}")
    options = {}
    if args.few_shot_weight is not None:
        options["few_shot_weight"] = args.few_shot_weight
    if args.coreset is not None:
        options["coreset"] = args.coreset
    return options


def _references_only(args) -> bool:
    """References with weight 1: the prompts play no part (no warning about untrained ones)."""
    on = getattr(args, "reference", None) is not None or getattr(args, "shots", None) is not None
    return on and getattr(args, "few_shot_weight", None) == 1


def _set_references(det, args) -> list[str]:
    """``--reference``: a references file is loaded, images are read like query images.
    Returns the files the references came from (none without ``--reference``)."""
    source = getattr(args, "reference", None)
    if source is None:
        return []
    from .inference.references import apply_references

    files = apply_references(det, source, shots=args.shots, max_pixels=int(getattr(args, "max_mpx", 40.0) * 1e6))
    logging.getLogger("s2swclip.cli").info(f"few-shot mode: {det.num_references} reference images from "
                                           f"{source} (weight {det.config.few_shot_weight})")
    return files


# ------------------------------------------------------------------------- exported models
def _add_exported_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", metavar="DIR",
                   help="run a model exported by 's2swclip export' (ONNX Runtime or OpenVINO, no PyTorch) "
                        "instead of building the detector from --backbone/--weights/--prompts")


_FEW_SHOT_FLAGS = ("reference", "shots", "few_shot_weight", "coreset")


def _check_exported_args(args) -> None:
    """``--model DIR`` fixes the model: the model options and the few-shot flags must not be set."""
    given = [f"--{k.replace('_', '-')}" for k, default in _MODEL_DEFAULTS.items()
             if getattr(args, k, default) != default]
    if given:
        raise S2SWError(f"--model {args.model} already fixes the backbone, weights, prompts, image size and "
                        f"precision; drop {', '.join(given)}")
    few_shot = [f"--{k.replace('_', '-')}" for k in _FEW_SHOT_FLAGS if getattr(args, k, None) is not None]
    if few_shot:
        raise S2SWError(f"{', '.join(few_shot)} cannot be used with --model {args.model}: references are baked in "
                        f"at export; export the model with them ('s2swclip export --reference DIR [--shots K] "
                        f"[--few-shot-weight W] [--coreset F] ...')")


def _exported(args):
    """The exported model of ``--model DIR`` (torch-free); the model options must not be set."""
    from .runtime import load_exported

    _check_exported_args(args)
    return load_exported(args.model)


def _threshold(args, model) -> float | None:
    """--threshold, else the threshold recorded in an exported model."""
    return args.threshold if args.threshold is not None else getattr(model, "threshold", None)


# ------------------------------------------------------------------------------------ commands
def cmd_train(args) -> int:
    from .train import train

    overrides = {k: getattr(args, k) for k in ("epochs", "batch_size", "lr", "seed", "alpha", "beta")}
    overrides["image_size"] = args.image_size
    result = train(args.data, args.out, backbone=args.backbone, weights=_weights(args.weights),
                   preset=args.preset or "visa-to-all", device=args.device, split=args.split,
                   init_prompts=args.prompts, precision=args.precision,
                   classes=args.classes, resume=args.resume, progress=not args.quiet,
                   max_batches=args.max_batches, num_workers=args.workers,
                   cache_features=args.cache_features, cache_dtype=args.cache_dtype, **overrides)
    print(f"prompts written to {result.checkpoint}")
    return 0


def cmd_test(args) -> int:
    from .data.dataset import read_meta
    from .eval.protocol import evaluate_dataset
    from .eval.report import format_markdown
    from .fileio import check_output_dir

    check_output_dir(args.out)
    for root in args.data:  # check every dataset before the (slow) model load
        read_meta(Path(root) / "meta.json")
    det = _detector(args)
    for root in args.data:
        name = Path(root).resolve().name
        out = Path(args.out) / name if len(args.data) > 1 else Path(args.out)
        common = dict(dataset_name=name, batch_size=args.batch_size, classes=args.classes,
                      aupro_method=args.aupro, out_dir=out, figures_per_class=args.figures,
                      progress=not args.quiet, num_workers=args.workers, heatmap_scale=args.heatmap_scale)
        if args.shots is not None:  # few-normal-shot protocol
            from .eval.fewshot import evaluate_few_shot, format_few_shot

            report = evaluate_few_shot(det, root, shots=args.shots, seeds=args.shot_seed or [0], **common)
            print(format_markdown(report))
            print(format_few_shot(report))
        else:
            report = evaluate_dataset(det, root, **common)
            print(format_markdown(report))
        print(f"report: {out / 'report.json'}")
    return 0


def cmd_predict(args) -> int:
    if args.engine == "ray":
        return _predict_ray(args)
    _refuse_ray_options(args)
    from .fileio import check_output_dir
    from .inference.inputs import collect_inputs
    from .inference.local import predict_files

    if args.model is not None:
        _check_exported_args(args)
    check_output_dir(args.out)  # inputs and output checked before the (slow) model load
    collect_inputs(args.inputs)
    if args.calibrate is not None:
        collect_inputs([args.calibrate])
    if args.reference is not None:
        collect_inputs([args.reference])
    if args.model is not None:
        scorer = _exported(args)  # torch-free
    else:
        from .inference.scorers import as_scorer

        scorer = as_scorer(_detector(args))
    summary = predict_files(scorer, args.inputs, args.out, threshold=_threshold(args, scorer),
                            calibrate_dir=args.calibrate, fpr=args.fpr, batch_size=args.batch_size,
                            overlays=not args.no_overlays, progress=not args.quiet,
                            max_pixels=int(args.max_mpx * 1e6), heatmap_scale=args.heatmap_scale)
    width = max((len(r["name"]) for r in summary.rows), default=10)
    for r in summary.rows:
        if r["error"]:
            print(f"{r['name']:<{width}}  skipped")
            continue
        verdict = "" if r["anomalous"] is None else ("  ANOMALOUS" if r["anomalous"] else "  normal")
        print(f"{r['name']:<{width}}  {r['score']:.4f}{verdict}")
    if summary.calibration is not None:
        print(summary.calibration.describe())
    print(f"{summary.n_scored} scored, {summary.n_failed} skipped; results in {Path(args.out) / 'results.csv'}")
    if not summary.n_scored:
        raise S2SWError(f"none of the {summary.n_failed} input files could be read as an image")
    return 0


# ---- predict --engine ray (scale-out batch scoring; s2swclip.inference.ray_engine) ----
_RAY_OPTIONS = ("ray_address", "workers", "gpus_per_worker", "cpus_per_worker", "shard_rows")


def _add_ray_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("engine", "--engine ray scores on Ray Data (pip install 's2swclip[ray]'): Parquet "
                                       "shards under OUT/results/, resumable by rerunning the same command")
    g.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="local (default): this process; ray: a Ray cluster or a local Ray instance")
    g.add_argument("--ray-address", metavar="ADDR", default=None,
                   help="Ray cluster to join (HOST:PORT printed by 'ray start --head', ray://HOST:PORT, or auto); "
                        "default: start Ray on this machine")
    g.add_argument("--workers", type=_positive_int, default=None,
                   help="scoring actors, each loads the model once (default 1)")
    g.add_argument("--gpus-per-worker", type=_non_negative, default=None,
                   help="GPUs per scoring actor (default 0: CPU; 0.5 puts two actors on each GPU)")
    g.add_argument("--cpus-per-worker", type=_positive, default=None,
                   help="CPUs reserved per scoring actor (default 1); decoding tasks take 1 CPU each")
    g.add_argument("--shard-rows", type=_positive_int, default=None,
                   help="rows per committed Parquet shard (default 5000; a crash loses at most a shard)")


def _refuse_ray_options(args) -> None:
    given = [f"--{k.replace('_', '-')}" for k in _RAY_OPTIONS if getattr(args, k) is not None]
    if given:
        raise S2SWError(f"{', '.join(given)} only apply with --engine ray")


def _predict_ray(args) -> int:
    from .inference.inputs import collect_inputs
    from .inference.ray_engine import predict_ray
    from .inference.spec import ScorerSpec

    if args.model is not None:  # an exported model: the workers need no torch
        from .runtime.manifest import read_manifest

        _check_exported_args(args)
        if args.gpus_per_worker:
            raise S2SWError(f"--model {args.model} runs on the CPU (ONNX Runtime / OpenVINO); drop --gpus-per-worker")
        spec = ScorerSpec.exported(args.model)
        threshold = args.threshold  # else the one recorded at export, as with the local engine
        if threshold is None:
            threshold = read_manifest(args.model, verify_files=False).get("threshold")
    else:
        if args.reference is not None:
            collect_inputs([args.reference])  # checked before Ray starts
        spec = ScorerSpec.detector(args.backbone, _weights(args.weights), args.prompts, image_size=args.image_size,
                                   device=args.device, precision=args.precision, preset=args.preset,
                                   cache_dir=args.cache_dir, reference=args.reference, shots=args.shots,
                                   max_pixels=int(args.max_mpx * 1e6), untrained_ok=_references_only(args),
                                   **_few_shot_options(args))
        threshold = args.threshold
    s = predict_ray(spec, args.inputs, args.out, threshold=threshold, calibrate_dir=args.calibrate,
                    fpr=args.fpr, batch_size=args.batch_size, workers=args.workers or 1,
                    gpus_per_worker=args.gpus_per_worker or 0.0, cpus_per_worker=args.cpus_per_worker or 1.0,
                    ray_address=args.ray_address, overlays=not args.no_overlays, progress=not args.quiet,
                    max_pixels=int(args.max_mpx * 1e6), shard_rows=args.shard_rows or 5000,
                    heatmap_scale=args.heatmap_scale)
    if s.calibration is not None:
        print(s.calibration.describe())
    print(f"{s.n_scored} scored, {s.n_failed} skipped ({s.n_new} rows written now, {s.n_already_done} already "
          f"done); results in {s.results_dir}")
    if not s.n_scored:
        raise S2SWError(f"none of the {s.n_failed} input files could be read as an image")
    return 0
# ---- end of predict --engine ray ----


def cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(args.out, seed=args.seed, progress=not args.quiet)
    return 0


def cmd_build_meta(args) -> int:
    from .data.builders import build_meta

    summary = build_meta(args.dataset, args.root)
    print(json.dumps(summary, indent=2, default=str))
    return 0


def build_serve_app(args):
    """The service app for the ``serve`` command's arguments (loads the model)."""
    from .serve.app import create_app
    from .serve.security import SecuritySettings, resolve_token

    security = SecuritySettings(token=resolve_token(args.token), host=args.host,
                                allow_hosts=tuple(args.allow_host or ()))
    model = _exported(args) if args.model is not None else _detector(args)
    return create_app(model, threshold=_threshold(args, model), save_dir=args.save,
                      save_max_bytes=int(args.save_max_mb * 1e6), max_batch=args.max_batch,
                      batch_wait_ms=args.batch_wait_ms, queue_size=args.queue_size,
                      max_upload_bytes=int(args.max_upload_mb * 1e6), max_pixels=int(args.max_mpx * 1e6),
                      max_inflight_pixels=int(args.max_inflight_mpx * 1e6), security=security,
                      upload_idle_timeout_s=args.upload_timeout, warmup=True,
                      heatmap_scale=args.heatmap_scale)


def cmd_export(args) -> int:
    from .export.exporter import ReferenceSource, check_export_request, export_detector

    check_export_request(args.format, args.precision, args.calibrate, args.out)  # before the model load
    if args.reference is not None:
        from .inference.inputs import collect_inputs

        collect_inputs([args.reference])
    torch_args = argparse.Namespace(**{**vars(args), "device": "cpu", "precision": "fp32"})
    det = _load_detector(torch_args)
    files = _set_references(det, torch_args)
    references = ReferenceSource(args.reference, files, args.shots) if files else None
    result = export_detector(det, args.out, format=args.format, precision=args.precision,
                             calibrate_dir=args.calibrate, calibrate_max=args.calibrate_max,
                             threshold=args.threshold, references=references)
    print(result.drift.describe())
    baked = (f" with {det.num_references} reference images baked in (few-shot weight {det.config.few_shot_weight})"
             if det.num_references else "")
    print(f"exported {args.format} {args.precision} model ({result.manifest['image_size']} px){baked} to "
          f"{result.folder} in {result.seconds:.0f} s; run it with 's2swclip predict --model {result.folder} IMAGES "
          f"--out DIR'")
    return 0


def cmd_serve(args) -> int:
    from .serve.app import bind_socket, run_server
    from .serve.security import exposure_warning, resolve_token

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


# -------------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    from .data.builders import describe
    from .eval.metrics import AUPRO_METHODS
    from .runtime.manifest import FORMATS as EXPORT_FORMATS, PRECISIONS as EXPORT_PRECISIONS

    parser = _Parser(prog="s2swclip", description="Zero-shot visual anomaly detection with S2SWCLIP.")
    parser.add_argument("--version", action="version", version=f"s2swclip {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("train", help="learn the prompts on an auxiliary annotated dataset")
    p.add_argument("--data", required=True, help="dataset root holding meta.json")
    p.add_argument("--out", required=True, help="output folder for checkpoints and logs")
    _add_model_args(p, prompts=False)
    p.add_argument("--prompts", default=None, help="start from this prompt checkpoint (fine-tuning)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--alpha", type=float, help="weight of the generic family's pixel loss")
    p.add_argument("--beta", type=float, help="weight of the pairwise image term")
    p.add_argument("--split", default="test", help="meta.json split to train on (default: test)")
    p.add_argument("--classes", nargs="+", help="train on these classes only")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in OUT")
    p.add_argument("--max-batches", type=int, help="batches per epoch (quick runs)")
    p.add_argument("--workers", type=int, default=0, help="data loading workers")
    p.add_argument("--cache-features", metavar="DIR|memory", default=None,
                   help="compute the frozen image features once per image and reuse them in later epochs, "
                        "stored in DIR (shareable by runs that differ only in training hyper-parameters) or "
                        "in memory (small sets)")
    p.add_argument("--cache-dtype", default="fp32", choices=("fp32", "fp16"),
                   help="feature cache entries: fp32 (default; results bit-identical to an uncached run) "
                        "or fp16 (half the space; slightly different prompts)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("test", help="evaluate a prompt checkpoint on datasets")
    p.add_argument("--data", required=True, nargs="+", help="dataset root(s) holding meta.json")
    p.add_argument("--out", required=True, help="output folder for report.json/csv and figures")
    _add_model_args(p)
    p.add_argument("--classes", nargs="+")
    p.add_argument("--batch-size", type=_positive_int, default=8)
    p.add_argument("--aupro", default="exact", choices=AUPRO_METHODS,
                   help="AUPRO: exact (MVTec definition) or grid200 (the released code's)")
    p.add_argument("--figures", type=int, default=4, help="overlay figures per class (0: none)")
    _add_heatmap_arg(p)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    _add_few_shot_args(p, protocol=True)
    p.set_defaults(func=cmd_test)

    p = sub.add_parser("predict", help="score images, folders, globs or manifests")
    p.add_argument("inputs", nargs="+",
                   help="image files, folders, glob patterns or manifests (.txt: one path per line; .csv/.parquet: "
                        "a 'path' column); local paths or URIs (s3://, gs://, hdfs://, file://)")
    p.add_argument("--out", required=True, help="output folder for results.csv/json and overlays")
    _add_model_args(p)
    p.add_argument("--threshold", type=_finite, help="flag images scoring above this")
    p.add_argument("--calibrate", metavar="DIR",
                   help="folder of known-good images: the threshold becomes their split-conformal quantile, "
                        "which bounds the expected false-positive rate on new good images by --fpr")
    p.add_argument("--fpr", type=_fraction, default=0.01,
                   help="false-positive rate allowed on good images when calibrating (default 0.01)")
    p.add_argument("--batch-size", type=_positive_int, default=8)
    p.add_argument("--max-mpx", type=_positive, default=40.0,
                   help="refuse images larger than this many megapixels (default 40)")
    p.add_argument("--no-overlays", action="store_true")
    _add_heatmap_arg(p)
    p.add_argument("--quiet", action="store_true")
    _add_few_shot_args(p)
    _add_exported_arg(p)
    _add_ray_args(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("export", help="export the detector to OpenVINO or ONNX (torch-free deployment)",
                       description="Export the whole detector (image in; image score and smoothed anomaly map "
                                   "out) for one image size, with a dynamic batch, into a folder that "
                                   "'predict --model' / 'serve --model' and s2swclip.runtime run without PyTorch. "
                                   "With --reference, the few-shot references are baked into the model.")
    p.add_argument("--format", required=True, choices=EXPORT_FORMATS, help="openvino or onnx")
    p.add_argument("--out", required=True, help="new or empty folder for the model files and s2swclip.json")
    p.add_argument("--precision", default="fp32", choices=EXPORT_PRECISIONS,
                   help="fp32 (exact); bf16 (OpenVINO, CPUs with bfloat16); int8 (OpenVINO, NNCF "
                        "post-training quantisation; needs --calibrate)")
    p.add_argument("--calibrate", metavar="DIR",
                   help="folder of normal images of the product: int8 statistics and the drift measurement")
    p.add_argument("--calibrate-max", type=_positive_int, default=32,
                   help="most calibration images used (default 32)")
    p.add_argument("--threshold", type=_finite, help="decision threshold recorded with the model")
    _add_model_args(p, torch_runtime=False)
    _add_few_shot_args(p)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("demo", help="offline end-to-end demo on synthetic data (tiny random backbone)")
    p.add_argument("--out", default="demo_out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("build-meta", help="write meta.json for a dataset in its original layout",
                       description="datasets: " + "; ".join(f"{k} = {v}" for k, v in describe().items()))
    p.add_argument("dataset", help="dataset name (see the list above)")
    p.add_argument("root", help="the dataset's root folder")
    p.set_defaults(func=cmd_build_meta)

    p = sub.add_parser("serve", help="web page and HTTP API for inspection")
    _add_model_args(p)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default loopback; others need a token, see --token)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--token", default=None,
                   help="bearer token required by the API (default: $S2SWCLIP_TOKEN; prefer the variable)")
    p.add_argument("--allow-host", action="append", metavar="NAME",
                   help="extra Host name the server answers to (repeatable; '*' for any, behind a proxy)")
    p.add_argument("--threshold", type=_finite)
    p.add_argument("--save", default=None, help="save uploads and results under this folder")
    p.add_argument("--save-max-mb", type=_positive, default=1000.0,
                   help="most megabytes the --save folder may hold (default 1000)")
    p.add_argument("--max-batch", type=_positive_int, default=8, help="largest micro-batch")
    p.add_argument("--batch-wait-ms", type=float, default=10.0, help="micro-batching wait")
    p.add_argument("--queue-size", type=_positive_int, default=64, help="pending images before answering 503")
    p.add_argument("--max-upload-mb", type=_positive, default=20.0, help="largest request body")
    p.add_argument("--max-mpx", type=_positive, default=40.0, help="largest image, in megapixels")
    p.add_argument("--max-inflight-mpx", type=_positive, default=64.0,
                   help="decoded megapixels held at once by all requests together (memory budget)")
    p.add_argument("--upload-timeout", type=_positive, default=30.0,
                   help="seconds without data before a stalled upload is answered 408")
    _add_few_shot_args(p)
    _add_heatmap_arg(p)
    _add_exported_arg(p)
    p.set_defaults(func=cmd_serve)
    return parser


# --------------------------------------------------------------------------------------- main
class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        return f"warning: {msg}" if record.levelno >= logging.WARNING else msg


def main(argv: list[str] | None = None) -> int:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    root = logging.getLogger("s2swclip")
    root.addHandler(handler)
    saved_level, root.propagate = root.level, False
    try:
        try:
            parser = build_parser()
            args = parser.parse_args(argv)
        except SystemExit as e:  # --help, --version
            return int(e.code or 0)
        if not getattr(args, "command", None):
            parser.print_help()
            return EXIT_USER_ERROR
        root.setLevel(logging.WARNING if getattr(args, "quiet", False) else logging.INFO)
        return int(args.func(args) or 0)
    except S2SWError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        root.removeHandler(handler)
        root.setLevel(saved_level)
        root.propagate = True


if __name__ == "__main__":
    sys.exit(main())
