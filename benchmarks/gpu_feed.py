"""How many decode workers keep a GPU fed: ``predict``'s local engine on a GPU, side by side in one
run, with 1, 2, 4, ... pipeline workers (``--decode-workers``).

On a GPU the model is fast and the CPU side (JPEG decoding, resizing to the model input,
drawing and PNG-encoding overlays, writing them) can become the bottleneck: the GPU then waits.
For each worker count this prints, on the same ``--n`` JPEG files (``--side`` x 3/4 px, the size
of the camera frames), with overlays on:

* ``img/s``: images scored per second over the whole run (model loaded once, warm);
* ``gpu busy``: the fraction of the run's wall time spent inside the scorer's calls (the
  batches' transfer, the forward pass and the maps' return: the GPU's share of the work); the
  rest is the model waiting for decoded images;
* ``model-only img/s``: the scorer alone on one preprocessed batch repeated (the ceiling).

When ``gpu busy`` stops rising with more workers, the GPU is fed; fewer workers starve it.
Weights do not change the timing, so random weights are used.

    python benchmarks/gpu_feed.py --device cuda --precision bf16 --n 256 --side 1920
    python benchmarks/gpu_feed.py --backbone S2SW-Tiny-24L --image-size 224 --n 64   # CPU smoke run
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from watch_latency import make_images  # this folder is on sys.path when run as a script


class TimedScorer:
    """``scorer`` with the wall time spent inside its ``score`` calls summed (thread-safe)."""

    def __init__(self, scorer) -> None:
        self._scorer = scorer
        self._lock = threading.Lock()
        self.busy_s = 0.0
        self.calls = 0

    def score(self, pixels):
        t0 = time.perf_counter()
        out = self._scorer.score(pixels)
        with self._lock:
            self.busy_s += time.perf_counter() - t0
            self.calls += 1
        return out

    def reset(self) -> None:
        with self._lock:
            self.busy_s, self.calls = 0.0, 0

    def __getattr__(self, name):
        return getattr(self._scorer, name)


def model_only_rate(scorer, batch: int, size: int, rounds: int = 5) -> float:
    """Images/s of the scorer alone on one preprocessed batch, repeated (after one warm-up)."""
    pixels = np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32)
    scorer.score(pixels)
    t0 = time.perf_counter()
    for _ in range(rounds):
        scorer.score(pixels)
    return batch * rounds / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="ViT-L-14-336")
    ap.add_argument("--image-size", type=int, default=518)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--n", type=int, default=256, help="JPEG files scored per run")
    ap.add_argument("--side", type=int, default=1920, help="the files' width (height 3/4 of it)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4, 8, 12])
    ap.add_argument("--no-overlays", action="store_true")
    args = ap.parse_args()

    from s2swclip import load_detector
    from s2swclip.inference.local import LocalEngine
    from s2swclip.inference.pipeline import default_workers
    from s2swclip.inference.scorers import as_scorer
    from s2swclip.specs import RunOptions

    warnings.filterwarnings("ignore", message="no prompt checkpoint given")
    work = Path(tempfile.mkdtemp(prefix="gpu_feed."))
    try:
        images = work / "in"
        t0 = time.perf_counter()
        make_images(images, args.n, args.side)
        print(f"{args.n} JPEGs {args.side}x{args.side * 3 // 4} written in {time.perf_counter() - t0:.1f} s; "
              f"{torch.get_num_threads()} torch threads, {len(__import__('os').sched_getaffinity(0))} cores")
        det = load_detector(args.backbone, None, None, image_size=args.image_size, device=args.device,
                            precision=args.precision, untrained_ok=True)
        scorer = TimedScorer(as_scorer(det))
        name = torch.cuda.get_device_name(0) if det.device.type == "cuda" else "CPU"
        ceiling = model_only_rate(scorer, args.batch_size, args.image_size)
        print(f"{args.backbone} {args.image_size} px {args.precision} on {name}, batch {args.batch_size}: "
              f"model-only {ceiling:.1f} img/s")
        engine = LocalEngine(scorer)
        print(f"default decode workers next to {scorer.device}: {default_workers(scorer.device)}")
        print(f"{'workers':>8} {'img/s':>8} {'gpu busy':>9} {'of ceiling':>11}")
        for i, k in enumerate([args.workers[0]] + list(args.workers)):  # run 0: a warm-up
            scorer.reset()
            out = work / f"out{k}"
            options = RunOptions(threshold=0.5, batch_size=args.batch_size, decode_workers=k,
                                 overlays=not args.no_overlays, progress=False)
            t0 = time.perf_counter()
            summary = engine.run([images], out, options)
            wall = time.perf_counter() - t0
            shutil.rmtree(out)
            assert len(summary.rows) == args.n
            rate = args.n / wall
            if i == 0:
                continue
            print(f"{k:>8} {rate:>8.1f} {scorer.busy_s / wall:>9.0%} {rate / ceiling:>11.0%}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
