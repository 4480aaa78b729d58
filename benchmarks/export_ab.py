"""Two exported folders side by side: the same random image through both with the torch-free
runtime, interleaved rounds, median wall and process CPU time, and the second's ratio to the
first (e.g. an export before and after a change of the graph; CPU time is disturbed much less
by other jobs on a shared machine). Both folders must be exported at the same image size.

    python benchmarks/export_ab.py OLD_EXPORT NEW_EXPORT --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("first")
    ap.add_argument("second")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import s2swclip

    models = [s2swclip.load_exported(p, threads=args.threads) for p in (args.first, args.second)]
    if models[0].image_size != models[1].image_size:
        raise SystemExit(f"error: image sizes differ ({models[0].image_size} and {models[1].image_size})")
    size = models[0].image_size
    x = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
    a, b = (m.predict(x) for m in models)  # also the warm-up
    print(f"max |d score| {float(np.abs(a.image_scores - b.image_scores).max()):.1e}, "
          f"max |d map| {float(np.abs(a.anomaly_maps - b.anomaly_maps).max()):.1e}")
    wall: list[list[float]] = [[], []]
    cpu: list[list[float]] = [[], []]
    for _ in range(args.rounds):
        for i, m in enumerate(models):
            t, c = time.perf_counter(), time.process_time()
            m.predict(x)
            wall[i].append(time.perf_counter() - t)
            cpu[i].append(time.process_time() - c)
    w0, c0 = statistics.median(wall[0]), statistics.median(cpu[0])
    for path, w, c in zip((args.first, args.second), wall, cpu):
        wm, cm = statistics.median(w), statistics.median(c)
        print(f"{path:50s} wall {wm:8.3f} s ({wm / w0:.2f})  CPU {cm:8.3f} s ({cm / c0:.2f})")


if __name__ == "__main__":
    main()
