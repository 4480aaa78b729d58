"""``s2swclip export``: the detector to OpenVINO or ONNX (torch-free deployment)."""

from __future__ import annotations

import argparse

from .options import add_few_shot_args, add_model_args, load_detector_of, set_references
from .types import finite, int_range


def add_parser(sub) -> None:
    """Register the ``export`` command."""
    from ..deploy.runtime.manifest import FORMATS as EXPORT_FORMATS, PRECISIONS as EXPORT_PRECISIONS

    p = sub.add_parser("export", help="export the detector to OpenVINO or ONNX (torch-free deployment)",
                       description="Export the whole detector (image in; image score and smoothed anomaly map "
                                   "out) for one image size, with a dynamic batch, into a folder that "
                                   "'predict --model' / 'serve --model' and s2swclip.deploy.runtime run without PyTorch. "
                                   "With --reference, the few-shot references are baked into the model.")
    p.add_argument("--format", required=True, choices=EXPORT_FORMATS, help="openvino or onnx")
    p.add_argument("--out", required=True, help="new or empty folder for the model files and s2swclip.json")
    p.add_argument("--precision", default="fp32", choices=EXPORT_PRECISIONS,
                   help="fp32 (exact); bf16 (OpenVINO, CPUs with bfloat16); int8 (OpenVINO, NNCF "
                        "post-training quantisation; needs --calibrate)")
    p.add_argument("--calibrate", metavar="DIR",
                   help="folder of normal images of the product: int8 statistics and the drift measurement")
    p.add_argument("--calibrate-max", type=int_range(1, 100_000), default=32,
                   help="most calibration images used (default 32)")
    p.add_argument("--threshold", type=finite, help="decision threshold recorded with the model")
    add_model_args(p, torch_runtime=False)
    add_few_shot_args(p)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_export)


def cmd_export(args) -> int:
    from ..deploy.export.exporter import ReferenceSource, check_export_request, export_detector

    check_export_request(args.format, args.precision, args.calibrate, args.out)  # before the model load
    if args.reference is not None:
        from ..inference.inputs import collect_inputs

        collect_inputs([args.reference])
    torch_args = argparse.Namespace(**{**vars(args), "device": "cpu", "precision": "fp32"})
    det = load_detector_of(torch_args)
    files = set_references(det, torch_args)
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
