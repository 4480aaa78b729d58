"""``s2swclip profile create|add|list|show|delete|calibrate``: product profiles on disk
(:mod:`s2swclip.profiles`), and the detector a profile was made for (``predict --profile``)."""

from __future__ import annotations

import argparse
import json
import os

from ..errors import S2SWError
from .options import MODEL_DEFAULTS, add_model_args, weights_arg
from .types import finite, fraction, positive, positive_int, unit_interval

#: Largest image file read from disk for a profile (bytes); larger files are refused unread.
MAX_FILE_BYTES = 256_000_000


def add_profiles_limits(p: argparse.ArgumentParser) -> None:
    """--max-profiles N and --max-references K (profile create/add, serve)."""
    from ..profiles.manifest import DEFAULT_MAX_PROFILES, DEFAULT_MAX_REFERENCES

    p.add_argument("--max-profiles", type=positive_int, default=DEFAULT_MAX_PROFILES,
                   help=f"most profiles the folder may hold (default {DEFAULT_MAX_PROFILES})")
    p.add_argument("--max-references", type=positive_int, default=DEFAULT_MAX_REFERENCES,
                   help=f"most good images per profile (default {DEFAULT_MAX_REFERENCES})")


def add_parser(sub) -> None:
    """Register the ``profile`` command and its sub-commands."""
    p = sub.add_parser("profile", help="product profiles: good images, bank and threshold of each product")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True, parser_class=type(p))

    def verb(name, help_text, images=False, model=False):
        v = verbs.add_parser(name, help=help_text)
        if name != "list":
            v.add_argument("name", help="profile name (letters, digits, '.', '_', '-')")
        if images:
            v.add_argument("images", nargs="*" if name == "create" else "+",
                           help="known-good images: files, folders or glob patterns")
        v.add_argument("--profiles", required=True, metavar="DIR", help="the profiles folder")
        if model:
            add_model_args(v)
            v.add_argument("--model", metavar="DIR", help="create: a profile on this exported model folder, with the "
                                                          "references fixed in it at export (no good images)")
            v.add_argument("--max-mpx", type=positive, default=40.0, help="largest image, in megapixels")
        v.set_defaults(func=cmd_profile, verb=name)
        return v

    c = verb("create", "a new profile from known-good images (builds its bank)", images=True, model=True)
    c.add_argument("--few-shot-weight", type=unit_interval, metavar="W",
                   help="weight of the references' map and score (default: 1 without --prompts, else 0.5)")
    c.add_argument("--threshold", type=finite, help="flag images scoring above this")
    c.add_argument("--calibrate", metavar="DIR", help="other known-good images: the threshold from their scores")
    c.add_argument("--fpr", type=fraction, default=0.01, help="false-positive rate of the calibration (default 0.01)")
    add_profiles_limits(c)
    a = verb("add", "add known-good images to a profile (new version)", images=True, model=True)
    add_profiles_limits(a)
    k = verb("calibrate", "threshold of a profile from other known-good images (new version)", images=True,
             model=True)
    k.add_argument("--fpr", type=fraction, default=0.01, help="false-positive rate allowed (default 0.01)")
    verb("list", "the profiles of a folder")
    verb("show", "one profile's manifest (JSON)")
    verb("delete", "remove a profile")


def read_good_images(sources: list[str], limit: int, what: str = "good image") -> list:
    """The images of ``sources`` (files, folders, globs) as GoodImage, at most ``limit``."""
    from ..inference.inputs import collect_inputs
    from ..profiles import GoodImage

    entries = collect_inputs(sources)
    if len(entries) > limit:
        raise S2SWError(f"{len(entries)} {what}s in {' '.join(sources)[:80]}, more than the limit of {limit} "
                        f"(--max-references)")
    out = []
    for e in entries:
        if e.problem is not None:
            raise S2SWError(f"{what} unusable: {e.problem}")
        size = os.path.getsize(e.path)
        if size > MAX_FILE_BYTES:
            raise S2SWError(f"{what} {e.path} is {size:,} bytes, more than {MAX_FILE_BYTES:,}")
        with open(e.path, "rb") as f:
            out.append(GoodImage(os.path.basename(e.path), f.read(MAX_FILE_BYTES + 1)))
    return out


def detector_for_profile(args, manifest: dict | None):
    """The detector of the model options; the ones not given come from the profile's manifest
    (the backbone, weights, prompts, image size and few-shot settings it was made with)."""
    from ..api import load_detector

    model = (manifest or {}).get("model", {})
    given = {k: getattr(args, k, MODEL_DEFAULTS[k]) for k in MODEL_DEFAULTS}
    recorded = {"backbone": model.get("backbone"), "weights": model.get("weights") or "none",
                "prompts": model.get("prompts"), "image_size": model.get("image_size"),
                "precision": model.get("precision")}
    chosen = {k: (recorded[k] if manifest and recorded.get(k) is not None and given[k] == MODEL_DEFAULTS[k]
                  else given[k]) for k in MODEL_DEFAULTS}
    options = {}
    if manifest:
        options = {"few_shot_layers": tuple(model["few_shot_layers"]), "few_shot_stream": model["few_shot_stream"],
                   "coreset": model.get("coreset")}
    return load_detector(chosen["backbone"], weights_arg(chosen["weights"]), chosen["prompts"],
                         image_size=chosen["image_size"], device=chosen["device"], precision=chosen["precision"],
                         preset=chosen["preset"], cache_dir=chosen["cache_dir"], untrained_ok=True, **options)


def exported_model_refusal(folder) -> str:
    """Why ``serve --model DIR --profiles DIR`` is refused: one line."""
    return (f"--model {folder}: the service of a profiles folder runs the PyTorch detector (--backbone, --weights, "
            f"--prompts); profiles made on an exported model ('profile create NAME --model DIR') are served by it too")


def _create_on_export(args) -> int:
    """``profile create NAME --model EXPORT_DIR``: a profile on an exported model (profiles.exported)."""
    from ..profiles import exported
    from .options import check_exported_args

    if args.images:
        raise S2SWError(f"--model {args.model}: the export's references are fixed (s2swclip.json 'references'); "
                        f"drop the good images, or export again with 's2swclip export --reference DIR'")
    check_exported_args(args)
    if args.few_shot_weight is not None:
        raise S2SWError(f"--few-shot-weight cannot be used with --model {args.model}: it is fixed at export")
    if args.calibrate and args.threshold is not None:
        raise S2SWError("give --threshold or --calibrate, not both")
    cal = read_good_images([args.calibrate], args.max_references, "calibration image") if args.calibrate else []
    store = open_store(args, must_exist=False)
    p = exported.create(store, args.name, args.model, threshold=args.threshold, calibration_images=cal, fpr=args.fpr)
    _print_exported(p)
    return 0


def _print_exported(p) -> None:
    thr = "none" if p.threshold is None else f"{p.threshold:.6f}"
    print(f"profile {p.name} version {p.version}: exported model {p.manifest['model']['exported']} "
          f"({p.num_references} references in the export), threshold {thr}")


def open_store(args, detector=None, must_exist: bool = True):
    from ..profiles import ProfileStore

    root = os.path.expanduser(args.profiles)
    if must_exist and not os.path.isdir(root):
        raise S2SWError(f"--profiles {args.profiles} is not a folder (create a profile there first)")
    return ProfileStore(root, detector, max_profiles=getattr(args, "max_profiles", 1 << 30),
                        max_references=getattr(args, "max_references", 1 << 30),
                        max_pixels=int(getattr(args, "max_mpx", 40.0) * 1e6))


def cmd_profile(args) -> int:
    from ..profiles import DEFAULT_MAX_REFERENCES, check_name

    if args.verb == "list":
        return _list(open_store(args))
    check_name(args.name)
    if args.verb == "show":
        print(json.dumps(open_store(args).show(args.name), indent=2))
        return 0
    if args.verb == "delete":
        open_store(args).delete(args.name)
        print(f"profile {args.name} deleted")
        return 0
    if args.verb == "create" and args.model is not None:
        return _create_on_export(args)
    if args.model is not None:
        raise S2SWError(f"--model {args.model}: the profile records its model; drop --model (only 'profile create' "
                        f"takes one)")
    if not args.images:
        raise S2SWError("no good images given: a profile needs at least one (or --model EXPORT_DIR)")
    if args.verb == "add":  # before any image is read
        from ..profiles.exported import refuse_add

        refuse_add(args.name, open_store(args).show(args.name))
    limit = getattr(args, "max_references", DEFAULT_MAX_REFERENCES)
    images = read_good_images(args.images, limit)
    if args.verb == "create":
        cal = read_good_images([args.calibrate], limit, "calibration image") if args.calibrate else []
        if cal and args.threshold is not None:
            raise S2SWError("give --threshold or --calibrate, not both")
        store = open_store(args, detector_for_profile(args, None), must_exist=False)
        p = store.create(args.name, images, few_shot_weight=args.few_shot_weight, threshold=args.threshold,
                         calibration_images=cal, fpr=args.fpr)
    else:
        manifest = open_store(args).show(args.name)
        if "exported" in manifest["model"]:
            return _change_exported(args, manifest, images)
        store = open_store(args, detector_for_profile(args, manifest))
        if args.verb == "add":
            p = store.add_references(args.name, images)
        else:
            p, calibration = store.calibrate(args.name, images, fpr=args.fpr)
            print(calibration.describe())
    thr = "none" if p.threshold is None else f"{p.threshold:.6f}"
    print(f"profile {p.name} version {p.version}: {p.num_references} references "
          f"({p.nbytes / 2**20:.1f} MiB bank), few-shot weight {p.few_shot_weight}, threshold {thr}")
    return 0


def _change_exported(args, manifest: dict, images: list) -> int:
    """``profile calibrate`` of a profile on an exported model: the images scored by the export
    (``add`` was refused before: its references are fixed in the export)."""
    from ..profiles import exported

    p, calibration = exported.calibrate(open_store(args), args.name, images, fpr=args.fpr)
    print(calibration.describe())
    _print_exported(p)
    return 0


def _list(store) -> int:
    rows, problems = store.summaries()
    for r in rows:
        thr = "-" if r["threshold"] is None else f"{r['threshold']:.6f}"
        print(f"{r['name']:<24} v{r['version']:<4} {r['references']:>3} refs  weight {r['few_shot_weight']:<4g} "
              f"threshold {thr:<10} {r['backbone']}  updated {r['updated']}")
    for name, problem in problems.items():
        print(f"{name:<24} UNUSABLE: {problem}")
    if not rows and not problems:
        print(f"no profiles under {store.root}")
    return 0
