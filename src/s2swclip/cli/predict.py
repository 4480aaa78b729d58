"""``s2swclip predict``: score images, folders, globs or manifests (local or Ray engine)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import S2SWError, safe_text
from .options import (add_model_args, add_run_args, check_exported_args, detector, detector_spec, exported_model,
                      threshold_of, torch_threads)
from .types import finite, float_range, fraction, int_range


def add_parser(sub) -> None:
    """Register the ``predict`` command."""
    p = sub.add_parser("predict", help="score images, folders, globs or manifests")
    p.add_argument("inputs", nargs="+",
                   help="image files, folders, glob patterns or manifests (.txt: one path per line; .csv/.parquet: "
                        "a 'path' column); local paths or URIs (s3://, gs://, hdfs://, file://)")
    p.add_argument("--out", required=True, help="output folder for results.csv/json and overlays")
    add_model_args(p)
    p.add_argument("--threshold", type=finite, help="flag images scoring above this")
    p.add_argument("--calibrate", metavar="DIR",
                   help="folder of known-good images: the threshold becomes their split-conformal quantile, "
                        "which bounds the expected false-positive rate on new good images by --fpr")
    p.add_argument("--fpr", type=fraction, default=0.01,
                   help="false-positive rate allowed on good images when calibrating (default 0.01)")
    add_run_args(p)
    p.add_argument("--profile", metavar="NAME", help="score with this product profile (its bank, few-shot weight "
                                                    "and threshold; the model options default to its own)")
    p.add_argument("--profiles", metavar="DIR", help="the profiles folder of --profile")
    _add_ray_args(p)
    p.set_defaults(func=cmd_predict)


def run_options(args, recorded_threshold: float | None = None):
    """The :class:`~s2swclip.specs.RunOptions` of the command's options (``recorded_threshold``:
    an exported model's, used without ``--threshold``)."""
    from ..specs import RunOptions

    return RunOptions(threshold=threshold_of(args, recorded_threshold), calibrate_dir=args.calibrate, fpr=args.fpr,
                      heatmap_scale=args.heatmap_scale, overlays=not args.no_overlays, batch_size=args.batch_size,
                      max_pixels=int(args.max_mpx * 1e6), progress=not args.quiet,
                      decode_workers=getattr(args, "decode_workers", None),
                      model_streams=getattr(args, "model_streams", None))


def cmd_predict(args) -> int:
    if args.engine == "ray":
        return _predict_ray(args)
    _refuse_ray_options(args)
    from ..fileio import check_output_dir
    from ..inference.inputs import collect_inputs
    from ..inference.local import LocalEngine

    if args.model is not None:
        check_exported_args(args)
    check_output_dir(args.out)  # inputs and output checked before the (slow) model load
    collect_inputs(args.inputs)
    if args.calibrate is not None:
        collect_inputs([args.calibrate])
    if args.reference is not None:
        collect_inputs([args.reference])
    with torch_threads(args):
        if args.profile is not None or args.profiles is not None:
            scorer = _profile_scorer(args)
        elif args.model is not None:
            scorer = exported_model(args)  # torch-free
        else:
            from ..inference.scorers import as_scorer

            scorer = as_scorer(detector(args))
        summary = LocalEngine(scorer).run(args.inputs, args.out, run_options(args, getattr(scorer, "threshold", None)))
    shown = [safe_text(r["name"]) for r in summary.rows]  # names come from folders and manifests
    width = max(map(len, shown), default=10)
    for name, r in zip(shown, summary.rows):
        if r["error"]:
            print(f"{name:<{width}}  skipped")
            continue
        verdict = "" if r["anomalous"] is None else ("  ANOMALOUS" if r["anomalous"] else "  normal")
        print(f"{name:<{width}}  {r['score']:.4f}{verdict}")
    if summary.calibration is not None:
        print(summary.calibration.describe())
    results = safe_text(Path(args.out) / "results.csv")
    print(f"{summary.n_scored} scored, {summary.n_failed} skipped; results in {results}")
    if not summary.n_scored:
        raise S2SWError(f"none of the {summary.n_failed} input files could be read as an image")
    return 0


def _profile_scorer(args):
    """``--profile NAME --profiles DIR``: the profile's scorer (its ``threshold`` is used unless
    --threshold or --calibrate is given)."""
    from .profile import detector_for_profile, open_store

    if args.profile is None or args.profiles is None:
        raise S2SWError("--profile NAME and --profiles DIR go together")
    clash = [flag for flag, value in (("--model", args.model), ("--reference", args.reference),
                                      ("--few-shot-weight", args.few_shot_weight), ("--coreset", args.coreset),
                                      ("--shots", args.shots)) if value is not None]
    if clash:
        raise S2SWError(f"--profile {args.profile} already fixes the model, references and weight; drop "
                        f"{', '.join(clash)}")
    manifest = open_store(args).show(args.profile)
    if "exported" in manifest["model"]:  # a profile on an exported model: torch-free (profiles.exported)
        check_exported_args(argparse.Namespace(**dict(vars(args), model=manifest["model"]["exported"])))
        store = open_store(args)
        store.exports.inference_timeout = args.inference_timeout
        return store.scorer(store.load(args.profile))
    store = open_store(args, detector_for_profile(args, manifest))
    return store.scorer(store.load(args.profile))


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
    g.add_argument("--workers", type=int_range(1, 1024), default=None,
                   help="scoring actors, each loads the model once (default 1)")
    g.add_argument("--gpus-per-worker", type=float_range(0, 64), default=None,
                   help="GPUs per scoring actor (default 0: CPU; 0.5 puts two actors on each GPU)")
    g.add_argument("--cpus-per-worker", type=float_range(0, 1024, lo_open=True), default=None,
                   help="CPUs reserved per scoring actor (default 1); decoding tasks take 1 CPU each")
    g.add_argument("--shard-rows", type=int_range(1, 10_000_000), default=None,
                   help="rows per committed Parquet shard (default 5000; a crash loses at most a shard)")


def _refuse_ray_options(args) -> None:
    given = [f"--{k.replace('_', '-')}" for k in _RAY_OPTIONS if getattr(args, k) is not None]
    if given:
        raise S2SWError(f"{', '.join(given)} only apply with --engine ray")


def _predict_ray(args) -> int:
    if args.profile is not None:
        raise S2SWError("--profile runs with the local engine: drop --engine ray")
    local_only = [flag for flag, value in (("--threads", args.threads), ("--decode-workers", args.decode_workers),
                                                        ("--model-streams", args.model_streams))
                  if value is not None]
    if local_only:
        raise S2SWError(f"{' and '.join(local_only)} only apply with the local engine: with --engine ray, "
                        f"decoding runs in Ray's CPU tasks and each scoring actor uses --cpus-per-worker threads")
    from ..inference.inputs import collect_inputs
    from ..inference.ray_engine import RayEngine, RaySettings
    from ..inference.spec import ScorerSpec

    if args.model is not None:  # an exported model: the workers need no torch
        from ..deploy.runtime.manifest import load_manifest

        check_exported_args(args)
        if args.gpus_per_worker:
            raise S2SWError(f"--model {args.model} runs on the CPU (ONNX Runtime / OpenVINO); drop --gpus-per-worker")
        spec = ScorerSpec.exported(args.model, inference_timeout=args.inference_timeout)
        # else the threshold recorded at export, as with the local engine
        recorded = load_manifest(args.model, verify_files=False).threshold if args.threshold is None else None
    else:
        if args.reference is not None:
            collect_inputs([args.reference])  # checked before Ray starts
        spec = ScorerSpec.detector(detector_spec(args))
        recorded = None
    settings = RaySettings(workers=args.workers or 1, gpus_per_worker=args.gpus_per_worker or 0.0,
                           cpus_per_worker=args.cpus_per_worker or 1.0, ray_address=args.ray_address,
                           shard_rows=args.shard_rows or 5000)
    s = RayEngine(spec, settings).run(args.inputs, args.out, run_options(args, recorded))
    if s.calibration is not None:
        print(s.calibration.describe())
    print(f"{s.n_scored} scored, {s.n_failed} skipped ({s.n_new} rows written now, {s.n_already_done} already "
          f"done); results in {safe_text(s.results_dir)}")
    if not s.n_scored:
        raise S2SWError(f"none of the {s.n_failed} input files could be read as an image")
    return 0
# ---- end of predict --engine ray ----
