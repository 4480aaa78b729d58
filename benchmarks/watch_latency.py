"""``s2swclip watch`` latency and the shared pipeline's throughput, side by side in one run.

1. Throughput (images/s, model loaded once, fresh output folder per run, overlays on), on the
   same ``--n`` JPEG images (``--side`` x 3/4 side):

   * ``baseline``: the local engine as it was before the pipeline overlapped its work (decoding
     ahead on threads, overlays drawn and written in the loop between the model's calls, one
     batch scored at a time on the main thread), with 1 PyTorch thread: the reference the
     ratios are given against;
   * ``predict``: :func:`~s2swclip.inference.local.predict_files` now, with 1 thread and with
     the command line's default threads (``--threads`` not given);
   * ``watch``: a :class:`~s2swclip.inference.watch.WatchStation` finding the same images in
     its folder at start (a burst), default threads (its run time less the idle wait before it
     exits).

   Two rates per run: ``overall`` (images / run time) and ``steady`` (from the overlays' write
   times, the first batch excluded: the same measure for every run). And the CPU time per
   image of the main thread (in the baseline the model's with 1 PyTorch thread, plus whatever
   else runs between its calls: its critical path; the pipeline scores on model threads of
   its own, ``model_streams`` batches at once, so there it is only the bookkeeping) and of the
   whole process: with the model on several threads the rates follow the process's CPU.

   All runs use the allocator thresholds the command line sets
   (:func:`s2swclip.allocator.keep_freed_memory`; ``benchmarks/allocator.py`` measures them).

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

from s2swclip.allocator import keep_freed_memory
from s2swclip.cli.options import default_torch_threads
from s2swclip.fileio import atomic_write_bytes
from s2swclip.inference.inputs import collect_inputs, display_names
from s2swclip.inference.local import overlay_names, predict_files
from s2swclip.inference.pipeline import InferencePipeline, overlay_png
from s2swclip.inference.scorers import as_scorer
from s2swclip.inference.watch import WatchOptions, WatchStation
from s2swclip.viz.heatmap import OverlayPainter


#: every run has a threshold, so that each overlay is drawn as its map comes (no run-range window)
THRESHOLD = 0.5


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


def baseline_predict(scorer, folder: Path, out: Path, batch_size: int = 8) -> None:
    """The local engine's loop before this change: overlays drawn and written between the
    model's calls (the pipeline still decodes ahead on threads, as it did)."""
    entries = collect_inputs([folder])
    names = display_names([e.path for e in entries])
    files = overlay_names(names)
    pipe = InferencePipeline(scorer, batch_size=batch_size, threshold=THRESHOLD, model_streams=1)
    painter = OverlayPainter("fixed", THRESHOLD, scorer.map_scale,
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


def steady_rate(out: Path, skip: int) -> float:
    """Images/s once running, from the overlays' write times (the first ``skip`` excluded: the
    pipeline filling up): the same measure for every run."""
    times = sorted(p.stat().st_mtime_ns / 1e9 for p in (out / "overlays").glob("*.png"))
    skip = min(skip, len(times) - 2)
    return (len(times) - 1 - skip) / max(times[-1] - times[skip], 1e-9)


def watch_burst(scorer, images: list[Path], out: Path, batch_size: int) -> float:
    """A watcher scoring ``images`` found in its folder at start; returns its run time less
    the idle time it waits before exiting."""
    inp = out.parent / "watch_in"
    shutil.rmtree(inp, ignore_errors=True)
    inp.mkdir(parents=True)
    for p in images:
        os.link(p, inp / p.name)
    pipe = InferencePipeline(scorer, batch_size=batch_size, threshold=THRESHOLD)
    idle = 0.5
    station = WatchStation(pipe, inp, out, {"bench": 1}, WatchOptions(exit_when_idle=idle, settle_ms=0))
    t = time.perf_counter()
    station.run()
    return time.perf_counter() - t - idle


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
    keep_freed_memory()  # as the command line does, for every run below alike
    from s2swclip.api import load_detector

    scorer = as_scorer(load_detector(args.backbone, None, None, image_size=args.image_size, untrained_ok=True))
    default = default_torch_threads()
    work = Path(tempfile.mkdtemp(prefix="watch_latency_"))
    try:
        images = make_images(work / "images", args.n, args.side)

        def fresh(name):  # a new output folder
            out = work / name
            shutil.rmtree(out, ignore_errors=True)
            return out

        def cpu_ms(run):  # (main-thread CPU, process CPU) per image, ms: what load does not change
            c, p = time.thread_time(), time.process_time()
            result = run()
            return result, (time.thread_time() - c) / args.n * 1000, (time.process_time() - p) / args.n * 1000

        def timed(threads, fn, *a, **kw):
            out = fresh(f"run_{len(os.listdir(work))}")
            seconds, main, total = cpu_ms(lambda: with_threads(threads, fn, *a, out, **kw))
            return args.n / seconds, steady_rate(out, args.batch_size), main, total

        def watch_run(threads):
            out = fresh(f"run_{len(os.listdir(work))}")
            seconds, main, total = cpu_ms(lambda: _watch_seconds(threads, scorer, images, out, args.batch_size))
            return args.n / seconds, steady_rate(out, args.batch_size), main, total

        runs = {
            "baseline: old local engine, 1 thread": lambda: timed(1, baseline_predict, scorer, work / "images",
                                                                  batch_size=args.batch_size),
            "predict, 1 thread": lambda: timed(1, _predict, scorer, work / "images", batch_size=args.batch_size),
            f"predict, default threads ({default})": lambda: timed(default, _predict, scorer, work / "images",
                                                                   batch_size=args.batch_size),
            f"watch (burst at start), default threads ({default})": lambda: watch_run(default),
        }
        rates: dict[str, list[tuple[float, ...]]] = {k: [] for k in runs}
        for _ in range(args.rounds):
            for name, run in runs.items():
                rates[name].append(run())
        print(f"{args.backbone} at {args.image_size} px, {args.n} JPEG {args.side}x{args.side * 3 // 4}, batch "
              f"{args.batch_size}, overlays on, {os.cpu_count()} cores, median of {args.rounds} rounds")
        print()
        print("| run | images/s overall | ratio | images/s steady | ratio | main-thread CPU ms/image "
              "| process CPU ms/image |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        base = [statistics.median(v) for v in zip(*rates[next(iter(runs))])]
        for name, values in rates.items():
            overall, steady, main, total = (statistics.median(v) for v in zip(*values))
            print(f"| {name} | {overall:.1f} | {overall / base[0]:.2f} | {steady:.1f} | {steady / base[1]:.2f} "
                  f"| {main:.1f} | {total:.1f} |")
        watch_rate = statistics.median(v[1] for v in rates[list(runs)[-1]])
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


def _watch_seconds(threads: int, scorer, images, out, batch_size) -> float:
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return watch_burst(scorer, images, out, batch_size)
    finally:
        torch.set_num_threads(saved)


def _predict(scorer, folder, out, batch_size):
    predict_files(scorer, [folder], out, batch_size=batch_size, progress=False, threshold=THRESHOLD)


if __name__ == "__main__":
    main()
