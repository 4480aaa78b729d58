"""AUPRO speed and agreement: s2swclip's ``grid200`` and ``exact`` against a plain 200-threshold loop.

The reference loop is a straightforward transcription of the structure of the authors' metrics
code (threshold x image x region): for each of the 200 thresholds it binarises all maps, labels
each image's mask (8-connectivity) and sums each region's true positives, then counts false
positives over all negative pixels; FPR < 0.3 points are kept, the FPR axis min-max rescaled and
the trapezoid area taken. Its thresholds are computed as under NumPy 1.x, which the released code
ran under (float64 step, comparisons in the maps' float32). ``--hoist`` labels every mask once, before the threshold loop (a
stricter, faster baseline).

Targets (200 maps at 518 x 518): grid200 >= 50x faster than the loop and within 1e-6 of it;
exact >= 15x faster and within 0.01 of it.

    python benchmarks/aupro_speed.py                 # 200 maps, 518 x 518 (loop: minutes)
    python benchmarks/aupro_speed.py --n 20 --size 128
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
from scipy import ndimage

from s2swclip.metrics import aupro

EIGHT = np.ones((3, 3), dtype=bool)


def make_data(n: int, size: int, seed: int = 0):
    """Random float32 maps with elliptic blob masks (about 60% of images anomalous)."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), dtype=bool)
    yy, xx = np.mgrid[0:size, 0:size]
    for i in range(n):
        if i > 0 and rng.random() > 0.6:
            continue
        for _ in range(rng.integers(1, 4)):
            cy, cx = rng.uniform(0, size, 2)
            ry, rx = rng.uniform(size / 40, size / 8, 2)
            masks[i] |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
    maps = rng.random((n, size, size), dtype=np.float32)
    maps *= np.float32(0.7)
    maps += np.float32(0.3) * masks
    return masks, maps


def loop_grid200(masks, maps, max_step=200, expect_fpr=0.3, hoist=False):
    """200-threshold loop in the shape of the authors' code (threshold x image x region)."""
    binary = np.zeros(maps.shape, dtype=bool)
    min_th, max_th = maps.min(), maps.max()
    # NumPy 1.x, which the released code ran under, computed this step in float64 and compared
    # the float32 maps with each threshold in float32; written out so NumPy >= 2 does the same
    delta = np.float64(max_th - min_th) / max_step
    labelled = [ndimage.label(m, structure=EIGHT)[0] for m in masks] if hoist else None
    inverse = (1 - masks.astype(np.uint8)) if hoist else None
    pros, fprs = [], []
    for th in np.arange(min_th, max_th, delta):
        np.greater(maps, maps.dtype.type(th), out=binary)
        pro = []
        for i, (b, mask) in enumerate(zip(binary, masks)):
            lab = labelled[i] if hoist else ndimage.label(mask, structure=EIGHT)[0]
            for r, sl in enumerate(ndimage.find_objects(lab), start=1):
                region = lab[sl] == r
                pro.append(b[sl][region].sum() / region.sum())
        inv = inverse if hoist else 1 - masks.astype(np.uint8)
        fp = np.logical_and(inv, binary).sum()
        fprs.append(fp / inv.sum())
        pros.append(np.array(pro).mean())
    fprs, pros = np.array(fprs), np.array(pros)
    keep = fprs < expect_fpr
    f = fprs[keep]
    f = (f - f.min()) / (f.max() - f.min())
    # sklearn.metrics.auc on a decreasing x: -trapezoid
    trapezoid = getattr(np, "trapezoid", None) or np.trapz
    return float(-trapezoid(pros[keep], f))


def timed(fn, repeat=1):
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return out, best


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=200, help="number of maps (default 200)")
    ap.add_argument("--size", type=int, default=518, help="map side in pixels (default 518)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=3, help="timing repeats for the fast variants (best)")
    ap.add_argument("--hoist", action="store_true", help="label masks once in the loop baseline")
    args = ap.parse_args(argv)

    masks, maps = make_data(args.n, args.size, args.seed)
    n_reg = sum(ndimage.label(m, structure=EIGHT)[1] for m in masks)
    print(
        f"data: {args.n} maps {args.size}x{args.size} float32, {n_reg} regions, "
        f"{masks.mean() * 100:.2f}% anomalous pixels"
    )
    sys.stdout.flush()

    g, t_grid = timed(lambda: aupro(masks, maps, method="grid200"), args.repeat)
    e, t_exact = timed(lambda: aupro(masks, maps, method="exact"), args.repeat)
    print(f"grid200 : {g:.9f}  {t_grid:8.3f} s")
    print(f"exact   : {e:.9f}  {t_exact:8.3f} s")
    sys.stdout.flush()
    ref, t_loop = timed(lambda: loop_grid200(masks, maps, hoist=args.hoist), 1)
    kind = "loop (labels hoisted)" if args.hoist else "loop (authors' structure)"
    print(f"{kind}: {ref:.9f}  {t_loop:8.3f} s")
    print()
    ok_g = abs(g - ref) <= 1e-6 and t_loop / t_grid >= 50
    ok_e = abs(e - ref) <= 0.01 and t_loop / t_exact >= 15
    print(
        f"grid200: {t_loop / t_grid:7.1f}x faster than the loop (target >= 50x), "
        f"|diff| = {abs(g - ref):.2e} (target <= 1e-6)  {'PASS' if ok_g else 'FAIL'}"
    )
    print(
        f"exact  : {t_loop / t_exact:7.1f}x faster than the loop (target >= 15x), "
        f"|diff| = {abs(e - ref):.2e} (target <= 0.01)  {'PASS' if ok_e else 'FAIL'}"
    )
    return 0 if (ok_g and ok_e) else 1


if __name__ == "__main__":
    raise SystemExit(main())
