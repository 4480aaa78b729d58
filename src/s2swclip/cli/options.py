"""Options shared by several commands (model, heat map, few-shot, exported model) and the
specs built from them (:class:`~s2swclip.specs.DetectorSpec`, the exported model, the threshold).

The library names fields (``threshold``); :data:`FLAGS` is the one table from fields to the flags
that set them, added to the errors' messages (:func:`flag_message`).
"""

from __future__ import annotations

import argparse
import contextlib
import logging

from ..errors import S2SWError
from .types import positive_int, seed_value, share, unit_interval

#: library field -> the command-line flag that sets it (None: no flag): the one table of every
#: command; errors name fields (:attr:`~s2swclip.errors.S2SWError.fields`), the CLI adds the flags
FLAGS: dict[str, str | None] = {
    # the detector (DetectorSpec) and the few-shot mode
    "backbone": "--backbone", "weights": "--weights", "prompts": "--prompts", "image_size": "--image-size",
    "device": "--device", "precision": "--precision", "preset": "--preset", "cache_dir": "--cache-dir",
    "reference": "--reference", "shots": "--shots", "few_shot_weight": "--few-shot-weight", "coreset": "--coreset",
    "max_pixels": "--max-mpx", "max_references": "--max-references", "options": None,
    # a batch run (RunOptions) and the Ray engine (RaySettings)
    "threshold": "--threshold", "calibrate_dir": "--calibrate", "fpr": "--fpr", "heatmap_scale": "--heatmap-scale",
    "overlays": "--no-overlays", "batch_size": "--batch-size", "max_inflight_pixels": "--max-inflight-mpx",
    "workers": "--workers", "gpus_per_worker": "--gpus-per-worker", "cpus_per_worker": "--cpus-per-worker",
    "shard_rows": "--shard-rows", "ray_address": "--ray-address", "decode_workers": "--decode-workers",
    "model_streams": "--model-streams",
    # the service (ServeSettings)
    "save_dir": "--save", "save_max_bytes": "--save-max-mb", "max_batch": "--max-batch",
    "batch_wait_ms": "--batch-wait-ms", "queue_size": "--queue-size", "max_upload_bytes": "--max-upload-mb",
    "upload_idle_timeout_s": "--upload-timeout", "max_inflight_bytes": "--max-inflight-mb",
    # training (TrainConfig, train())
    "epochs": "--epochs", "lr": "--lr", "seed": "--seed", "alpha": "--alpha", "beta": "--beta", "split": "--split",
    "classes": "--classes", "items": "--data", "max_batches": "--max-batches", "num_workers": "--workers",
    "cache_features": "--cache-features", "cache_dtype": "--cache-dtype", "feature_cache": "--cache-dtype",
    "detector_options": None,
    # outputs, the few-shot protocol (test), exported models, the watch command
    "out_dir": "--out", "seeds": "--shot-seed", "model": "--model", "inference_timeout": "--inference-timeout",
    "on_anomaly": "--on-anomaly", "format": "--format", "profiles": "--profiles", "max_profiles": "--max-profiles",
    # fields of the library only (DetectorConfig, TrainConfig): no flag sets them
    "feature_layers": None, "dpam_layers": None, "few_shot_layers": None, "few_shot_stream": None, "betas": None,
    "pairwise_hinge": None,
}
#: the model options of :func:`add_model_args`, fields of :class:`~s2swclip.specs.DetectorSpec`
MODEL_FIELDS = ("backbone", "weights", "prompts", "image_size", "device", "precision", "preset", "cache_dir")
#: their defaults (also used to tell which ones were given next to --model or --profile)
MODEL_DEFAULTS = {"backbone": "ViT-L-14-336", "weights": "openai", "prompts": None, "image_size": None,
                  "device": "cpu", "precision": "fp32", "preset": None, "cache_dir": None}


def flag_message(err: Exception) -> str:
    """The message of a library error with the flag of each field it names (:data:`FLAGS`)."""
    with_flags = getattr(err, "with_flags", None)
    return with_flags(FLAGS) if with_flags is not None else str(err)


def add_model_args(p: argparse.ArgumentParser, prompts: bool = True, torch_runtime: bool = True) -> None:
    """The model options; ``torch_runtime=False`` leaves out --device and --precision (export)."""
    from ..model.config import PRECISIONS, PRESETS  # torch-free: --help and --model never load torch

    g = p.add_argument_group("model")
    g.add_argument("--backbone", default=MODEL_DEFAULTS["backbone"],
                   help="open_clip model name or model-config JSON path (default: ViT-L-14-336)")
    g.add_argument("--weights", default=MODEL_DEFAULTS["weights"],
                   help="pretrained tag (default: openai), weights file (.pt/.pth/.safetensors), "
                        "or 'none' for random weights")
    if prompts:
        g.add_argument("--prompts", default=None,
                       help="prompt checkpoint (.safetensors from 's2swclip train' or the authors' .pth)")
    g.add_argument("--image-size", type=positive_int, default=None,
                   help="input side in pixels (default: preset's or 518)")
    if torch_runtime:
        g.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")
        g.add_argument("--precision", default="fp32", choices=PRECISIONS,
                       help="fp32 (faithful), bf16 (CPU/CUDA autocast) or fp16 (CUDA)")
    g.add_argument("--preset", default=None, choices=list(PRESETS),
                   help="protocol preset for the test-time values")
    g.add_argument("--cache-dir", default=None, help="download cache for pretrained weights")


def add_heatmap_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--heatmap-scale", default="fixed", choices=("fixed", "image"),
                   help="overlay colours: fixed (default; one scale, centred on the threshold when there is "
                        "one, else the run's range; a normal image stays blue) or image (each map's own range)")


def weights_arg(value: str | None):
    return None if value is None or str(value).lower() in ("none", "random") else value


def detector_spec(args, *, protocol: bool = False):
    """The :class:`~s2swclip.specs.DetectorSpec` of the model and few-shot options. ``protocol``:
    the command's few-shot mode is the evaluation protocol's (``test --shots K``, references drawn
    from the dataset) rather than ``--reference DIR``."""
    from ..specs import DetectorSpec

    options = few_shot_options(args, protocol=protocol)
    reference = None if protocol else getattr(args, "reference", None)
    return DetectorSpec(args.backbone, weights_arg(args.weights), getattr(args, "prompts", None),
                        image_size=args.image_size, device=getattr(args, "device", "cpu"),
                        precision=getattr(args, "precision", "fp32"), preset=args.preset, cache_dir=args.cache_dir,
                        reference=reference, shots=None if reference is None else args.shots,
                        max_pixels=None if reference is None else int(getattr(args, "max_mpx", 40.0) * 1e6),
                        max_references=None if reference is None else getattr(args, "max_reference_images", None),
                        untrained_ok=references_only(args), **options)


def load_detector_of(args):
    """The detector of the model options and the few-shot options (references not set yet:
    :func:`set_references`)."""
    from ..inference.spec import build_detector

    return build_detector(detector_spec(args).replace(reference=None))


def detector(args, *, protocol: bool = False):
    """The detector of the command's options, references set (``--reference``)."""
    from ..inference.spec import build_detector

    spec = detector_spec(args, protocol=protocol)
    det = build_detector(spec)
    log_references(det, spec.reference)
    return det


# ----------------------------------------------------------------------- few-normal-shot mode
def add_few_shot_args(p: argparse.ArgumentParser, protocol: bool = False, max_references: bool = True) -> None:
    """predict/serve: ``--reference DIR [--shots K]``; test (``protocol``): ``--shots K
    --shot-seed S [S ...]``; both: ``--few-shot-weight W``, ``--coreset F``."""
    g = p.add_argument_group("few-shot (known-good reference images of the product)")
    if protocol:
        g.add_argument("--shots", type=positive_int, metavar="K",
                       help="few-shot protocol: K normal references per class, drawn from the train split "
                            "(from the test normals, then excluded from scoring, when there is none)")
        g.add_argument("--shot-seed", type=seed_value, nargs="+", metavar="S",
                       help="seed(s) of the draw (default 0); several seeds: mean +- std in the report")
    else:
        g.add_argument("--reference", metavar="DIR",
                       help="folder (or image files, glob) of known-good images, or a references .safetensors "
                            "file saved with det.save_references: turns the few-shot mode on")
        g.add_argument("--shots", type=positive_int, metavar="K",
                       help="use the first K reference images (sorted by path; default: all)")
    if not protocol and max_references:  # serve: --max-references is the profiles' limit (default used here)
        g.add_argument("--max-references", type=positive_int, default=1000, metavar="N", dest="max_reference_images",
                       help="refuse a --reference folder with more images than this (the bank's memory grows "
                            "with each; default: 1000), and one whose bank would not fit in the available memory")
    g.add_argument("--few-shot-weight", type=unit_interval, metavar="W",
                   help="weight of the few-shot map and score in [0, 1] (default 0.5); 1: references only, "
                        "no trained prompts needed")
    g.add_argument("--coreset", type=share, metavar="F",
                   help="keep this fraction of each layer's reference tokens (greedy k-center): less memory "
                        "and time with many references")


def few_shot_options(args, *, protocol: bool = False) -> dict:
    """Detector options of the few-shot flags; refuses flags that would be ignored (the mode is
    on with ``--shots K`` in the ``protocol``, with ``--reference DIR`` elsewhere)."""
    weight, coreset = getattr(args, "few_shot_weight", None), getattr(args, "coreset", None)
    on = (args.shots if protocol else getattr(args, "reference", None)) is not None
    given = [flag for flag, value in (("--few-shot-weight", weight), ("--coreset", coreset),
                                      ("--shot-seed", getattr(args, "shot_seed", None) if protocol else None),
                                      ("--shots", None if protocol else getattr(args, "shots", None)))
             if value is not None]
    if given and not on:
        raise S2SWError(f"{given[0]} only applies to the few-shot mode: add {'--shots K' if protocol else '--reference DIR'}")
    return {k: v for k, v in (("few_shot_weight", weight), ("coreset", coreset)) if v is not None}


def references_only(args) -> bool:
    """References with weight 1: the prompts play no part (no warning about untrained ones)."""
    on = getattr(args, "reference", None) is not None or getattr(args, "shots", None) is not None
    return on and getattr(args, "few_shot_weight", None) == 1


def log_references(det, source) -> None:
    """Say that the few-shot mode is on (``source``: where the references came from)."""
    if source is not None:
        logging.getLogger("s2swclip.cli").info(f"few-shot mode: {det.num_references} reference images from "
                                               f"{source} (weight {det.config.few_shot_weight})")


def set_references(det, args) -> list[str]:
    """``--reference``: a references file is loaded, images are read like query images.
    Returns the files the references came from (none without ``--reference``)."""
    source = getattr(args, "reference", None)
    if source is None:
        return []
    from ..inference.references import apply_references

    files = apply_references(det, source, shots=args.shots, max_pixels=int(getattr(args, "max_mpx", 40.0) * 1e6),
                             max_references=getattr(args, "max_reference_images", 1000))
    log_references(det, source)
    return files


# ------------------------------------------------------------------------- exported models
def add_exported_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", metavar="DIR",
                   help="run a model exported by 's2swclip export' (ONNX Runtime or OpenVINO, no PyTorch) "
                        "instead of building the detector from --backbone/--weights/--prompts")
    p.add_argument("--inference-timeout", type=float, default=300.0, metavar="S",
                   help="with --model: seconds one batch may take in the runtime before its images fail "
                        "(a model graph can loop for ever; default: 300)")


FEW_SHOT_FLAGS = ("reference", "shots", "few_shot_weight", "coreset")


def check_exported_args(args) -> None:
    """``--model DIR`` fixes the model: the model options and the few-shot flags must not be set."""
    from ..specs import DetectorSpec

    defaults = DetectorSpec()
    given = [FLAGS[k] for k in MODEL_FIELDS if getattr(args, k, getattr(defaults, k)) != getattr(defaults, k)]
    if given:
        raise S2SWError(f"--model {args.model} already fixes the backbone, weights, prompts, image size and "
                        f"precision; drop {', '.join(given)}")
    few_shot = [f"--{k.replace('_', '-')}" for k in FEW_SHOT_FLAGS if getattr(args, k, None) is not None]
    if few_shot:
        raise S2SWError(f"{', '.join(few_shot)} cannot be used with --model {args.model}: references are baked in "
                        f"at export; export the model with them ('s2swclip export --reference DIR [--shots K] "
                        f"[--few-shot-weight W] [--coreset F] ...')")


def exported_model(args):
    """The exported model of ``--model DIR`` (torch-free); the model options must not be set."""
    from ..deploy.runtime import load_exported

    check_exported_args(args)
    return load_exported(args.model, inference_timeout=args.inference_timeout)


def threshold_of(args, recorded: float | None) -> float | None:
    """--threshold, else the threshold recorded in an exported model (None for a detector)."""
    return args.threshold if args.threshold is not None else recorded


def add_run_args(p: argparse.ArgumentParser) -> None:
    """The options of a scoring run that ``predict`` and ``watch`` share (fields of
    :class:`~s2swclip.specs.RunOptions`, the threads, the few-shot mode, an exported model)."""
    from .types import batch_count, mega

    p.add_argument("--batch-size", type=batch_count, default=8)
    p.add_argument("--max-mpx", type=mega, default=40.0,
                   help="refuse images larger than this many megapixels (default 40)")
    p.add_argument("--no-overlays", action="store_true")
    add_heatmap_arg(p)
    p.add_argument("--quiet", action="store_true")
    add_threads_arg(p)
    add_few_shot_args(p)
    add_exported_arg(p)


# ------------------------------------------------------------------------------ CPU threads
def add_threads_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=positive_int, default=None,
                   help="PyTorch threads of the model on the CPU (default: the cores less the decoding workers' "
                        "share, cores - cores//4, at least 1: a 2-core machine runs the model on 1 thread and "
                        "decodes on the other core)")
    p.add_argument("--decode-workers", type=positive_int, default=None,
                   help="threads that decode images and write overlays beside the model (default: the cores, "
                        "2 to 4; next to a GPU every core, at most 16: see docs/usage.md, 'Feeding a GPU')")
    p.add_argument("--model-streams", type=positive_int, default=None,
                   help="batches the model scores at once, each on a thread of its own (default on the CPU: "
                        "the cores // --threads, at most 4, so 2 on a 2-core machine; 1 on a GPU). Each "
                        "one holds its own activations: give 1 to halve the memory of a large model")


def default_torch_threads(cores: int | None = None) -> int:
    """The model's threads when ``--threads`` is not given: the cores less a quarter (at least
    one) left to the pipeline's decoding and overlay workers, so the two do not oversubscribe
    the cores (PyTorch's threads slow down badly when they must wait for a busy core)."""
    import os

    cores = int(cores or os.cpu_count() or 1)
    return max(1, cores - max(1, cores // 4))


@contextlib.contextmanager
def torch_threads(args):
    """Run the command with ``--threads`` (or :func:`default_torch_threads`) PyTorch threads;
    the previous setting comes back afterwards (the command line runs inside tests too). An
    exported model (``--model``) sets its own runtime's threads: PyTorch is left alone."""
    if getattr(args, "model", None) is not None:
        yield None
        return
    import torch

    n = getattr(args, "threads", None) or default_torch_threads()
    saved = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(saved)
