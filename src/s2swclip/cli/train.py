"""``s2swclip train``: learn the prompts on an auxiliary annotated dataset."""

from __future__ import annotations

from ..errors import S2SWError
from .options import add_model_args, weights_arg
from .types import worker_count

# --epochs, --batch-size, --lr, --seed, --alpha, --beta and --max-batches are parsed as plain numbers
# and checked by the training configuration (TrainConfig): one line naming the field, FLAGS adds the flag.

#: The flag of each field the training library names in its errors (``S2SWError.fields``).
FLAGS: dict[str, str | None] = {
    "epochs": "--epochs", "batch_size": "--batch-size", "image_size": "--image-size", "lr": "--lr",
    "seed": "--seed", "alpha": "--alpha", "beta": "--beta", "backbone": "--backbone",
    "weights": "--weights", "precision": "--precision", "split": "--split", "classes": "--classes",
    "items": "--data", "max_batches": "--max-batches", "num_workers": "--workers",
    "cache_features": "--cache-features", "cache_dtype": "--cache-dtype", "feature_cache": "--cache-dtype",
    "detector_options": None,
}


def add_parser(sub) -> None:
    """Register the ``train`` command."""
    p = sub.add_parser("train", help="learn the prompts on an auxiliary annotated dataset")
    p.add_argument("--data", required=True, help="dataset root holding meta.json")
    p.add_argument("--out", required=True, help="output folder for checkpoints and logs")
    add_model_args(p, prompts=False)
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
    p.add_argument("--workers", type=worker_count, default=0, help="data loading workers (default 0)")
    p.add_argument("--cache-features", metavar="DIR|memory", default=None,
                   help="compute the frozen image features once per image and reuse them in later epochs, "
                        "stored in DIR (shareable by runs that differ only in training hyper-parameters) or "
                        "in memory (small sets)")
    p.add_argument("--cache-dtype", default="fp32", choices=("fp32", "fp16"),
                   help="feature cache entries: fp32 (default; results bit-identical to an uncached run) "
                        "or fp16 (half the space; slightly different prompts)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_train)


def cmd_train(args) -> int:
    from ..training.loop import train

    overrides = {k: getattr(args, k) for k in ("epochs", "batch_size", "lr", "seed", "alpha", "beta")}
    overrides["image_size"] = args.image_size
    try:
        result = train(args.data, args.out, backbone=args.backbone, weights=weights_arg(args.weights),
                       preset=args.preset or "visa-to-all", device=args.device, split=args.split,
                       init_prompts=args.prompts, precision=args.precision,
                       classes=args.classes, resume=args.resume, progress=not args.quiet,
                       max_batches=args.max_batches, num_workers=args.workers,
                       cache_features=args.cache_features, cache_dtype=args.cache_dtype, **overrides)
    except S2SWError as e:  # the library names fields; the command line shows their flags
        raise S2SWError(e.with_flags(FLAGS)) from None
    print(f"prompts written to {result.checkpoint}")
    return 0
