"""The detector's CPU time per image with glibc's default allocator thresholds and with
:func:`s2swclip.allocator.keep_freed_memory` (what the command line sets), side by side.

Each setting runs in a fresh process of its own (the thresholds cannot be undone), alternating,
``--rounds`` times; the median ms/image and minor page faults per image of each, and the ratio.

Example (docs/benchmarks.md):
    python benchmarks/allocator.py --backbone S2SW-Tiny-24L --image-size 112 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

PROBE = r"""
import json, resource, sys, time
import numpy as np, torch
mode, backbone, size, batch, threads, calls = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
torch.set_num_threads(threads)
if mode == "on":
    from s2swclip.allocator import keep_freed_memory
    assert keep_freed_memory()
from s2swclip.api import load_detector
from s2swclip.inference.scorers import as_scorer
scorer = as_scorer(load_detector(backbone, None, None, image_size=size, untrained_ok=True))
x = np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32)
for _ in range(2):
    scorer.score(x)
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
t = time.perf_counter()
for _ in range(calls):
    scorer.score(x)
seconds = time.perf_counter() - t
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
print(json.dumps({"ms": seconds / (calls * batch) * 1000, "faults": faults / (calls * batch)}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="S2SW-Tiny-24L")
    ap.add_argument("--image-size", type=int, default=112)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--calls", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    results: dict[str, list[dict]] = {"off": [], "on": []}
    for _ in range(args.rounds):
        for mode in results:
            out = subprocess.run([sys.executable, "-c", PROBE, mode, args.backbone, str(args.image_size),
                                  str(args.batch_size), str(args.threads), str(args.calls)],
                                 capture_output=True, text=True, check=True)
            results[mode].append(json.loads(out.stdout.strip().splitlines()[-1]))
    med = {m: {k: statistics.median(r[k] for r in rs) for k in ("ms", "faults")} for m, rs in results.items()}
    print(f"{args.backbone} at {args.image_size} px, batch {args.batch_size}, {args.threads} thread(s), "
          f"median of {args.rounds} processes each")
    print()
    print("| allocator | ms/image | page faults/image | ratio |")
    print("|---|---:|---:|---:|")
    for mode, name in (("off", "glibc defaults"), ("on", "keep_freed_memory()")):
        print(f"| {name} | {med[mode]['ms']:.2f} | {med[mode]['faults']:.0f} | {med[mode]['ms'] / med['off']['ms']:.2f} |")


if __name__ == "__main__":
    main()
