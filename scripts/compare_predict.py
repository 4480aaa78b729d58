"""Before/after check of ``predict`` on the tiny backbone: save outputs once, compare later.

Used when a model function is rewritten into another form that must give the same numbers
(e.g. the export-friendly forms of the filters, pooling and resampling): run ``--save`` on the
old code, ``--compare`` on the new one; it prints the largest differences per configuration
and exits 1 when one is above ``--atol``.

    PYTHONPATH=src python scripts/compare_predict.py --save /tmp/before.pt     # old code
    PYTHONPATH=src python scripts/compare_predict.py --compare /tmp/before.pt  # new code
    PYTHONPATH=src python scripts/compare_predict.py --compare /tmp/before.pt --portable

``--portable`` runs the new code with the export-friendly forms (``s2swclip.model.portable``).
"""

from __future__ import annotations

import argparse
import contextlib
import sys

import torch

# (name, image size, batch, load_detector options): even and odd token counts, N < 384 and
# N > 384 pooled tokens, both presets, true per-layer features, no smoothing
CASES = [
    ("default-224", 224, 2, {}),
    ("odd-grid-238", 238, 2, {}),
    ("large-518", 518, 1, {}),
    ("visa-to-all-406", 406, 1, {"preset": "visa-to-all"}),
    ("no-aliasing-210", 210, 2, {"layer_aliasing": False}),
    ("no-smoothing-224", 224, 1, {"sigma": 0}),
]


def run_cases() -> dict[str, dict[str, torch.Tensor]]:
    import s2swclip

    out = {}
    for name, size, batch, options in CASES:
        det = s2swclip.load_detector("S2SW-Tiny-24L", None, None, image_size=size, untrained_ok=True,
                                     **options)
        with torch.no_grad():  # trained-like prompts, as the tests' fixture
            g = torch.Generator().manual_seed(5)
            for p in det.prompts.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        images = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))
        pred = det.predict(images)
        out[name] = {"scores": pred.image_scores.clone(), "maps": pred.anomaly_maps.clone()}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    group = ap.add_mutually_exclusive_group(required=True)
    group.add_argument("--save", metavar="FILE")
    group.add_argument("--compare", metavar="FILE")
    ap.add_argument("--atol", type=float, default=1e-6)
    ap.add_argument("--portable", action="store_true", help="use the export-friendly forms")
    args = ap.parse_args()
    torch.set_num_threads(1)  # reproducible reductions
    with contextlib.ExitStack() as stack:
        if args.portable:
            from s2swclip.model.portable import portable_forms

            stack.enter_context(portable_forms())
        results = run_cases()
    if args.save:
        torch.save(results, args.save)
        print(f"saved {len(results)} cases to {args.save}")
        return 0
    before = torch.load(args.compare, weights_only=True)
    worst = 0.0
    print(f"{'case':<20}{'max |d score|':>16}{'max |d map|':>14}")
    for name, now in results.items():
        ds = (now["scores"] - before[name]["scores"]).abs().max().item()
        dm = (now["maps"] - before[name]["maps"]).abs().max().item()
        worst = max(worst, ds, dm)
        print(f"{name:<20}{ds:>16.2e}{dm:>14.2e}")
    print(f"largest difference {worst:.2e} (tolerance {args.atol:.0e})")
    return 0 if worst <= args.atol else 1


if __name__ == "__main__":
    sys.exit(main())
