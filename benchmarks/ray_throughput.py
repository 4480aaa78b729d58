"""Images per second of ``s2swclip predict``: the local engine next to the Ray engine with 1 and
2 scoring workers, on the same images, and Ray's start-up overhead.

Every engine scores the same folder of ``--n`` JPEG images into a fresh output folder (overlays
on, as by default), in interleaved rounds; medians are reported. The local engine's model is
loaded once beforehand, so its rate is ``n / T``. A Ray run commits a shard per batch; from the
shards' commit times come its steady rate (rows after the first shard over the time from the
first shard to the last) and its fixed overhead per run (time to the first shard less the time
its rows take at the steady rate: actors starting, loading the model, the pipeline spinning up).
The local Ray instance is started once; its start (``ray.init``) is reported apart. Weights do
not change the timing: random weights.

The local engine runs twice: with PyTorch's default threads (one per core) and with one thread,
as each Ray worker has (Ray sets a worker's threads to its CPUs, 1 here). On a machine whose
cores other programs also use, PyTorch's threads wait for each other and one thread can be much
faster than several: the two local rows show how much.

Example (the table in docs/scale-out.md, 2 CPU cores):
    python benchmarks/ray_throughput.py --n 300 --image-size 112 --rounds 2
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from s2swclip.inference.local import predict_files
from s2swclip.inference.ray_engine import RayEngine, RaySettings
from s2swclip.inference.spec import ScorerSpec
from s2swclip.specs import RunOptions
from watch_latency import make_images  # this folder is on sys.path when run as a script


def _rates(out: Path, start: float, total: float, n: int) -> tuple[float, float, float]:
    """(run seconds, steady images/s, fixed overhead s) of a finished run in ``out``."""
    shards = sorted((out / "results").glob("part-*.parquet"), key=lambda p: p.stat().st_mtime)
    if len(shards) < 2:  # the local engine (results.csv), or a single shard: no steady part
        return total, n / total, 0.0
    import pyarrow.parquet as pq

    first_rows = pq.read_metadata(shards[0]).num_rows
    t_first, t_last = shards[0].stat().st_mtime, shards[-1].stat().st_mtime
    steady = (n - first_rows) / max(t_last - t_first, 1e-9)
    return total, steady, (t_first - start) - first_rows / steady


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="S2SW-Tiny-24L")
    ap.add_argument("--image-size", type=int, default=112)
    ap.add_argument("--n", type=int, default=300, help="images")
    ap.add_argument("--side", type=int, default=640, help="width of the generated images")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--cpus", type=int, default=os.cpu_count(), help="CPUs of the local Ray instance")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import ray

    work = Path(tempfile.mkdtemp(prefix="ray_throughput_"))
    try:
        inputs = work / "images"
        make_images(inputs, args.n, args.side)
        spec = ScorerSpec.detector(args.backbone, None, None, image_size=args.image_size)

        t = time.perf_counter()
        scorer = spec.build()
        load_s = time.perf_counter() - t
        t = time.perf_counter()
        ray.init(num_cpus=args.cpus, include_dashboard=False, logging_level="WARNING")
        init_s = time.perf_counter() - t

        def ray_run(workers: int, cpus: float):
            engine = RayEngine(spec, RaySettings(workers=workers, cpus_per_worker=cpus, shard_rows=args.batch_size))
            return lambda out: engine.run([inputs], out, RunOptions(batch_size=args.batch_size, progress=False))

        import torch

        default_threads = torch.get_num_threads()

        def local_run(threads: int):
            def run(out):
                torch.set_num_threads(threads)
                try:
                    return predict_files(scorer, [inputs], out, batch_size=args.batch_size, progress=False)
                finally:
                    torch.set_num_threads(default_threads)
            return run

        engines = {
            f"local, {default_threads} torch threads (default)": local_run(default_threads),
            "local, 1 torch thread": local_run(1),
            "ray, 1 worker": ray_run(1, min(1.0, args.cpus - 1)),
            "ray, 2 workers": ray_run(2, min(1.0, max(0.5, (args.cpus - 1) / 2))),
        }
        results: dict[str, list[tuple[float, float, float]]] = {}
        for r in range(args.rounds):
            for name, run in engines.items():
                out = work / f"out_{r}_{list(engines).index(name)}"
                start = time.time()
                run(out)
                total = time.time() - start
                results.setdefault(name, []).append(_rates(out, start, total, args.n))
                shutil.rmtree(out)
        ray.shutdown()

        print(f"{args.backbone} at {args.image_size} px, {args.n} JPEG images {args.side}x{args.side * 3 // 4}, "
              f"batch {args.batch_size}, {args.cpus} CPUs for Ray ({os.cpu_count()} here), "
              f"median of {args.rounds} rounds")
        print(f"model load (once, in this process): {load_s:.1f} s; "
              f"local Ray instance start (ray.init): {init_s:.1f} s")
        print()
        print("| engine | run s | images/s overall | images/s steady | steady ratio to local "
              "| fixed overhead per run s |")
        print("|---|---:|---:|---:|---:|---:|")
        base = None
        for name, runs in results.items():
            total, steady, overhead = (statistics.median(v) for v in zip(*runs))
            base = steady if base is None else base
            print(f"| {name} | {total:.1f} | {args.n / total:.2f} | {steady:.2f} | {steady / base:.2f} "
                  f"| {overhead:.1f} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
