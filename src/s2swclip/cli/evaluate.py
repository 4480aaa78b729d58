"""``s2swclip test``: evaluate a prompt checkpoint on datasets (tables, report, figures)."""

from __future__ import annotations

from pathlib import Path

from ..errors import safe_lines, safe_text
from .options import add_few_shot_args, add_heatmap_arg, add_model_args, detector
from .types import batch_count, int_range, worker_count


def add_parser(sub) -> None:
    """Register the ``test`` command."""
    from ..eval.metrics import AUPRO_METHODS

    p = sub.add_parser("test", help="evaluate a prompt checkpoint on datasets")
    p.add_argument("--data", required=True, nargs="+", help="dataset root(s) holding meta.json")
    p.add_argument("--out", required=True, help="output folder for report.json/csv and figures")
    add_model_args(p)
    p.add_argument("--classes", nargs="+")
    p.add_argument("--batch-size", type=batch_count, default=8)
    p.add_argument("--aupro", default="exact", choices=AUPRO_METHODS,
                   help="AUPRO: exact (MVTec definition) or grid200 (the released code's)")
    p.add_argument("--figures", type=int_range(0, 10_000), default=4, help="overlay figures per class (0: none)")
    add_heatmap_arg(p)
    p.add_argument("--workers", type=worker_count, default=0, help="data loading workers (default 0)")
    p.add_argument("--quiet", action="store_true")
    add_few_shot_args(p, protocol=True)
    p.set_defaults(func=cmd_test)


def cmd_test(args) -> int:
    from ..data.dataset import read_meta
    from ..eval.protocol import evaluate_dataset
    from ..eval.report import format_markdown
    from ..fileio import check_output_dir

    check_output_dir(args.out)
    for root in args.data:  # check every dataset before the (slow) model load
        read_meta(Path(root) / "meta.json")
    det = detector(args)
    for root in args.data:
        name = Path(root).resolve().name
        out = Path(args.out) / name if len(args.data) > 1 else Path(args.out)
        common = dict(dataset_name=name, batch_size=args.batch_size, classes=args.classes,
                      aupro_method=args.aupro, out_dir=out, figures_per_class=args.figures,
                      progress=not args.quiet, num_workers=args.workers, heatmap_scale=args.heatmap_scale)
        if args.shots is not None:  # few-normal-shot protocol
            from ..eval.fewshot import format_few_shot
            from ..eval.protocol import evaluate_few_shot

            report = evaluate_few_shot(det, root, shots=args.shots, seeds=args.shot_seed or [0], **common)
            print(safe_lines(format_markdown(report)))  # class names come from meta.json
            print(safe_lines(format_few_shot(report)))
        else:
            report = evaluate_dataset(det, root, **common)
            print(safe_lines(format_markdown(report)))
        print(f"report: {safe_text(out / 'report.json')}")
    return 0
