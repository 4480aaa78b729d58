"""``s2swclip watch`` latency and the shared pipeline's throughput, side by side in one run.

1. Throughput (images/s, model loaded once, fresh output folder per run, overlays on), on the
   same ``--n`` JPEG images (``--side`` x 3/4 side):

   * ``baseline``: the local engine as it was before the pipeline overlapped its work (decoding
     ahead on threads, overlays drawn and written in the loop between the model's calls), with
     1 PyTorch thread: the reference the ratios are given against;
   * ``predict``: :func:`~s2swclip.inference.local.predict_files` now, with 1 thread and with
     the command line's default threads (``--threads`` not given);
   * ``watch``: a :class:`~s2swclip.inference.watch.WatchStation` finding the same images in
     its folder at start (a burst), default threads: steady rate from its results' times
     (first batch excluded).

2. Latency at a steady arrival rate (``--rate`` images/s, default half the watch throughput
   measured above): each image is written as ``IN/<name>.part`` and renamed to ``IN/<name>``
   (what a careful camera does); the latency is from the rename to its line appearing in
   ``OUT/results.jsonl`` (polled every 2 ms; the line's fsync and the ledger's commit follow
   its write at once, in the same step). p50 / p95 / max.

Example (the README's figures, 2 CPU cores):
    python benchmarks/watch_latency.py --n 600 --latency-n 200
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from s2swclip.cli.options import default_torch_threads
from s2swclip.fileio import atomic_write_bytes
from s2swclip.inference.inputs import collect_inputs, display_names
from s2swclip.inference.local import overlay_names, predict_files
from s2swclip.inference.pipeline import InferencePipeline, overlay_png
from s2swclip.inference.scorers import as_scorer
from s2swclip.inference.watch import WatchOptions, WatchStation
from s2swclip.viz.heatmap import OverlayPainter


def make_images(folder: Path, n: int, side: int, seed: int = 0) -> list[Path]:
    """``n`` photo-like JPEGs ``side`` x ``3 side / 4`` (smooth noise: realistic file sizes)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        base = rng.integers(0, 256, (side * 3 // 4 // 8, side // 8, 3), dtype=np.uint8)
        paths.append(folder / f"{i:05d}.jpg")
        Image.fromarray(base).resize((side, side * 3 // 4), Image.BICUBIC).save(paths[-1], quality=90)
    return paths


def baseline_predict(scorer, folder: Path, out: Path, batch_size: int) -> None:
    """The local engine's loop before this change: overlays drawn and written between the
    model's calls (the pipeline still decodes ahead on threads, as it did)."""
    entries = collect_inputs([folder])
    names = display_names([e.path for e in entries])
    files = overlay_names(names)
    pipe = InferencePipeline(scorer, batch_size=batch_size)
    painter = OverlayPainter("fixed", None, scorer.map_scale,
                             draw=lambda p, m, s: overlay_png(p, m, scale=s, colorbar=True), write=atomic_write_bytes)
    for rec in pipe.run([(e.path, n) for e, n in zip(entries, names)]):
        if rec.error is None:
            painter.add(rec.preview, rec.anomaly_map, out / files[rec.index])
        rec.release()
    painter.flush()
    pipe.close()


def with_threads(n: int, fn, *args, **kwargs):
    saved = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        t = time.perf_counter()
        fn(*args, **kwargs)
        return time.perf_counter() - t
    finally:
        torch.set_num_threads(saved)


def _times(out: Path) -> list[float]:
    import json
    from datetime import datetime

    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    return sorted(datetime.fromisoformat(r["scored_at"]).timestamp() for r in rows)


def watch_burst(scorer, images: list[Path], work: Path, batch_size: int) -> float:
    """Steady images/s of a watcher scoring ``images`` found in its folder at start."""
    inp, out = work / "watch_in", work / "watch_out"
    shutil.rmtree(inp, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    inp.mkdir(parents=True)
    for p in images:
        os.link(p, inp / p.name)
    pipe = InferencePipeline(scorer, batch_size=batch_size)
    station = WatchStation(pipe, inp, out, {"bench": 1}, WatchOptions(exit_when_idle=0.5, settle_ms=0))
    station.run()
    times = _times(out)
    skip = min(batch_size, len(times) - 2)
    return (len(times) - 1 - skip) / max(times[-1] - times[skip], 1e-9)


def watch_latency(scorer, images: list[Path], work: Path, batch_size: int, rate: float) -> list[float]:
    """Seconds from each image's rename into IN to its line in results.jsonl."""
    inp, out = work / "lat_in", work / "lat_out"
    shutil.rmtree(inp, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    inp.mkdir(parents=True)
    pipe = InferencePipeline(scorer, batch_size=batch_size)
    station = WatchStation(pipe, inp, out, {"bench": 1}, WatchOptions(settle_ms=500))
    runner = threading.Thread(target=station.run)
    runner.start()
    renamed: dict[str, float] = {}
    seen: dict[str, float] = {}
    stop = threading.Event()

    def tail():
        import json

        results = out / "results.jsonl"
        pos = 0
        while not stop.is_set() or len(seen) < len(renamed):
            if results.exists():
                with open(results, "rb") as f:
                    f.seek(pos)
                    chunk = f.read()
                now = time.time()
                cut = chunk.rfind(b"\n") + 1
                for line in chunk[:cut].splitlines():
                    seen[json.loads(line)["name"]] = now
                pos += cut
            time.sleep(0.002)

    tailer = threading.Thread(target=tail)
    time.sleep(1.0)  # the watcher's first scan
    tailer.start()
    start = time.time()
    for i, p in enumerate(images):
        time.sleep(max(0.0, start + i / rate - time.time()))
        tmp = inp / (p.name + ".part")
        shutil.copyfile(p, tmp)
        renamed[p.name] = time.time()
        os.rename(tmp, inp / p.name)
    stop.set()
    tailer.join(timeout=120)
    station.request_stop()
    runner.join()
    return [seen[k] - renamed[k] for k in renamed if k in seen]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="S2SW-Tiny-24L")
    ap.add_argument("--image-size", type=int, default=112)
    ap.add_argument("--n", type=int, default=160, help="images for the throughput runs (the issue's figure: 600)")
    ap.add_argument("--latency-n", type=int, default=60, help="images arriving for the latency run")
    ap.add_argument("--rate", type=float, default=None, help="arrivals per second (default: half the watch rate)")
    ap.add_argument("--side", type=int, default=640)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from s2swclip.api import load_detector

    scorer = as_scorer(load_detector(args.backbone, None, None, image_size=args.image_size, untrained_ok=True))
    default = default_torch_threads()
    work = Path(tempfile.mkdtemp(prefix="watch_latency_"))
    try:
        images = make_images(work / "images", args.n, args.side)

        def fresh(name):
            out = work / name
            shutil.rmtree(out, ignore_errors=True)
            return out

        runs = {
            "baseline: old local engine, 1 thread": lambda: args.n / with_threads(
                1, baseline_predict, scorer, work / "images", fresh("b"), args.batch_size),
            "predict, 1 thread": lambda: args.n / with_threads(
                1, predict_files, scorer, [work / "images"], fresh("p1"), batch_size=args.batch_size, progress=False),
            f"predict, default threads ({default})": lambda: args.n / with_threads(
                default, predict_files, scorer, [work / "images"], fresh("pd"), batch_size=args.batch_size,
                progress=False),
            f"watch (burst at start), default threads ({default})": lambda: _steady_watch(
                default, scorer, images, work, args.batch_size),
        }
        rates: dict[str, list[float]] = {k: [] for k in runs}
        for _ in range(args.rounds):
            for name, run in runs.items():
                rates[name].append(run())
        print(f"{args.backbone} at {args.image_size} px, {args.n} JPEG {args.side}x{args.side * 3 // 4}, batch "
              f"{args.batch_size}, overlays on, {os.cpu_count()} cores, median of {args.rounds} rounds")
        print()
        print("| run | images/s | ratio to baseline |")
        print("|---|---:|---:|")
        base = statistics.median(rates[next(iter(runs))])
        for name, values in rates.items():
            v = statistics.median(values)
            print(f"| {name} | {v:.1f} | {v / base:.2f} |")
        watch_rate = statistics.median(rates[list(runs)[-1]])
        rate = args.rate or watch_rate / 2
        saved = torch.get_num_threads()
        torch.set_num_threads(default)
        try:
            lat = watch_latency(scorer, images[: args.latency_n], work, args.batch_size, rate)
        finally:
            torch.set_num_threads(saved)
        q = np.percentile(lat, [50, 95]) * 1000
        print()
        print(f"watch latency, rename into IN -> line in results.jsonl, {len(lat)} images at {rate:.1f}/s: "
              f"p50 {q[0]:.0f} ms, p95 {q[1]:.0f} ms, max {max(lat) * 1000:.0f} ms")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _steady_watch(threads: int, scorer, images, work, batch_size) -> float:
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return watch_burst(scorer, images, work, batch_size)
    finally:
        torch.set_num_threads(saved)


if __name__ == "__main__":
    main()
