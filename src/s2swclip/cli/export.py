"""``s2swclip export``: the detector to OpenVINO or ONNX (torch-free deployment)."""

from __future__ import annotations

import argparse

from .options import add_few_shot_args, add_model_args, detector_spec, log_references
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
    from ..inference.references import apply_references
    from ..model.factory import load_detector

    spec = detector_spec(argparse.Namespace(**{**vars(args), "device": "cpu", "precision": "fp32"}))
    det = load_detector(**spec.replace(reference=None).load_kwargs())
    references = None
    if spec.reference is not None:  # the files they were read from are recorded in the manifest
        limit = {} if spec.max_references is None else {"max_references": spec.max_references}
        files = apply_references(det, spec.reference, shots=spec.shots, max_pixels=spec.max_pixels, **limit)
        references = ReferenceSource(args.reference, files, args.shots)
        log_references(det, spec.reference)
    result = export_detector(det, args.out, format=args.format, precision=args.precision,
                             calibrate_dir=args.calibrate, calibrate_max=args.calibrate_max,
                             threshold=args.threshold, references=references)
    print(result.drift.describe())
    baked = (f" with {det.num_references} reference images baked in (few-shot weight {det.config.few_shot_weight})"
             if det.num_references else "")
    print(f"exported {args.format} {args.precision} model ({result.manifest.image_size} px){baked} to "
          f"{result.folder} in {result.seconds:.0f} s; run it with 's2swclip predict --model {result.folder} IMAGES "
          f"--out DIR'")
    return 0
