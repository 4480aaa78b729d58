"""The ``s2swclip`` command line: a thin layer over the Python API.

User mistakes end with one line on stderr (``error: ...``) and exit status 2; no traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

from . import __version__
from .errors import S2SWError

EXIT_USER_ERROR = 2


def _add_model_args(p: argparse.ArgumentParser, prompts: bool = True) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--backbone", default="ViT-L-14-336",
                   help="open_clip model name or model-config JSON path (default: ViT-L-14-336)")
    g.add_argument("--weights", default="openai",
                   help="pretrained tag (default: openai), weights file (.pt/.pth/.safetensors), "
                        "or 'none' for random weights")
    if prompts:
        g.add_argument("--prompts", default=None,
                       help="prompt checkpoint (.safetensors from 's2swclip train' or the authors' .pth)")
    g.add_argument("--image-size", type=int, default=None, help="input side in pixels (default: preset's or 518)")
    g.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")
    g.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                   help="fp32 (faithful), bf16 (CPU/CUDA autocast) or fp16 (CUDA)")
    g.add_argument("--preset", default=None, choices=["visa-to-all", "mvtec-to-visa"],
                   help="protocol preset for the test-time values")
    g.add_argument("--cache-dir", default=None, help="download cache for pretrained weights")


def _weights(value: str | None):
    return None if value is None or str(value).lower() in ("none", "random") else value


def _detector(args):
    from .api import load_detector

    return load_detector(args.backbone, _weights(args.weights), getattr(args, "prompts", None),
                         image_size=args.image_size, device=args.device, precision=args.precision,
                         preset=args.preset, cache_dir=args.cache_dir)


def _say(msg: str) -> None:
    print(msg, file=sys.stderr)


# ------------------------------------------------------------------------------------ commands
def cmd_train(args) -> int:
    from .train import train

    overrides = {k: getattr(args, k) for k in ("epochs", "batch_size", "lr", "seed", "alpha", "beta")}
    overrides["image_size"] = args.image_size
    result = train(args.data, args.out, backbone=args.backbone, weights=_weights(args.weights),
                   preset=args.preset or "visa-to-all", device=args.device, split=args.split,
                   init_prompts=args.prompts, precision=args.precision,
                   classes=args.classes, resume=args.resume, progress=not args.quiet,
                   max_batches=args.max_batches, num_workers=args.workers, log=_say, **overrides)
    print(f"prompts written to {result.checkpoint}")
    return 0


def cmd_test(args) -> int:
    from .data.dataset import read_meta
    from .eval.report import format_markdown
    from .evaluate import evaluate_dataset

    for root in args.data:  # check every dataset before the (slow) model load
        read_meta(Path(root) / "meta.json")
    det = _detector(args)
    for root in args.data:
        name = Path(root).resolve().name
        out = Path(args.out) / name if len(args.data) > 1 else Path(args.out)
        report = evaluate_dataset(det, root, dataset_name=name, batch_size=args.batch_size,
                                  classes=args.classes, aupro_method=args.aupro, out_dir=out,
                                  figures_per_class=args.figures, progress=not args.quiet,
                                  num_workers=args.workers, log=_say)
        print(format_markdown(report))
        print(f"report: {out / 'report.json'}")
    return 0


def cmd_predict(args) -> int:
    from .predict import collect_images, run_predict

    paths = collect_images(args.inputs)  # check the inputs before the (slow) model load
    if args.calibrate is not None:
        collect_images([args.calibrate])
    det = _detector(args)
    summary = run_predict(det, paths, args.out, threshold=args.threshold, calibrate=args.calibrate,
                          fpr=args.fpr, batch_size=args.batch_size, overlays=not args.no_overlays,
                          progress=not args.quiet, warn=_say)
    width = max((len(r["name"]) for r in summary["results"]), default=10)
    for r in summary["results"]:
        name = r["name"]
        if r["error"]:
            print(f"{name:<{width}}  skipped")
            continue
        verdict = "" if r["anomalous"] is None else ("  ANOMALOUS" if r["anomalous"] else "  normal")
        print(f"{name:<{width}}  {r['score']:.4f}{verdict}")
    print(f"{summary['n_scored']} scored, {summary['n_failed']} skipped; results in {Path(args.out) / 'results.csv'}")
    if not summary["n_scored"]:
        raise S2SWError(f"none of the {summary['n_failed']} input files could be read as an image")
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(args.out, seed=args.seed, progress=not args.quiet, log=_say)
    return 0


def cmd_build_meta(args) -> int:
    from .data.builders import build_meta

    summary = build_meta(args.dataset, args.root)
    print(json.dumps(summary, indent=2, default=str))
    return 0


def cmd_serve(args) -> int:
    from .serve.app import serve

    serve(args)
    return 0


# -------------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="s2swclip", description="Zero-shot visual anomaly detection with S2SWCLIP.")
    parser.add_argument("--version", action="version", version=f"s2swclip {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

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
    p.add_argument("--resume", action="store_true", help="continue from OUT/train_state.pt")
    p.add_argument("--max-batches", type=int, help="batches per epoch (quick runs)")
    p.add_argument("--workers", type=int, default=0, help="data loading workers")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("test", help="evaluate a prompt checkpoint on datasets")
    p.add_argument("--data", required=True, nargs="+", help="dataset root(s) holding meta.json")
    p.add_argument("--out", required=True, help="output folder for report.json/csv and figures")
    _add_model_args(p)
    p.add_argument("--classes", nargs="+")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--aupro", default="exact", choices=["exact", "grid200"],
                   help="AUPRO: exact (MVTec definition) or grid200 (the released code's)")
    p.add_argument("--figures", type=int, default=4, help="overlay figures per class (0: none)")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_test)

    p = sub.add_parser("predict", help="score images, folders or globs")
    p.add_argument("inputs", nargs="+", help="image files, folders or glob patterns")
    p.add_argument("--out", required=True, help="output folder for results.csv/json and overlays")
    _add_model_args(p)
    p.add_argument("--threshold", type=float, help="flag images scoring above this")
    p.add_argument("--calibrate", help="folder of known-good images to choose the threshold")
    p.add_argument("--fpr", type=float, default=0.01, help="fraction of good images allowed above the calibrated threshold")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--no-overlays", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("demo", help="offline end-to-end demo on synthetic data (tiny random backbone)")
    p.add_argument("--out", default="demo_out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("build-meta", help="write meta.json for a dataset in its original layout")
    p.add_argument("dataset", help="dataset name (mvtec, visa, mpdd, btad, sdd, dagm, dtd, headct, "
                                   "brainmri, br35h, isic, colondb, clinicdb, kvasir, endo, tn3k, mvtec-style)")
    p.add_argument("root", help="the dataset's root folder")
    p.set_defaults(func=cmd_build_meta)

    p = sub.add_parser("serve", help="web page and HTTP API for inspection")
    _add_model_args(p)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--threshold", type=float)
    p.add_argument("--save", default=None, help="save uploads and results under this folder")
    p.add_argument("--max-batch", type=int, default=8, help="largest micro-batch")
    p.add_argument("--batch-wait-ms", type=float, default=10.0, help="micro-batching wait")
    p.add_argument("--queue-size", type=int, default=64, help="pending images before answering 503")
    p.add_argument("--max-upload-mb", type=float, default=20.0)
    p.add_argument("--max-pixels", type=int, default=40_000_000)
    p.set_defaults(func=cmd_serve)
    return parser


def _showwarning(message, category, filename, lineno, file=None, line=None):
    print(f"warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return EXIT_USER_ERROR
    warnings.showwarning = _showwarning
    try:
        return int(args.func(args) or 0)
    except S2SWError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
