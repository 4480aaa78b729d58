"""``s2swclip demo`` (offline end-to-end demo) and ``s2swclip build-meta`` (meta.json of a dataset)."""

from __future__ import annotations

import json

from .types import seed_value


def add_demo_parser(sub) -> None:
    """Register the ``demo`` command."""
    p = sub.add_parser("demo", help="offline end-to-end demo on synthetic data (tiny random backbone)")
    p.add_argument("--out", default="demo_out")
    p.add_argument("--seed", type=seed_value, default=0)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_demo)


def add_build_meta_parser(sub) -> None:
    """Register the ``build-meta`` command."""
    from ..data.builders import describe

    p = sub.add_parser("build-meta", help="write meta.json for a dataset in its original layout",
                       description="datasets: " + "; ".join(f"{k} = {v}" for k, v in describe().items()))
    p.add_argument("dataset", help="dataset name (see the list above)")
    p.add_argument("root", help="the dataset's root folder")
    p.set_defaults(func=cmd_build_meta)


def cmd_demo(args) -> int:
    from ..demo import run_demo

    run_demo(args.out, seed=args.seed, progress=not args.quiet)
    return 0


def cmd_build_meta(args) -> int:
    from ..data.builders import build_meta

    summary = build_meta(args.dataset, args.root)
    print(json.dumps(summary, indent=2, default=str))
    return 0
