"""Training epoch time with and without the feature cache (``train --cache-features``).

Side by side in one process, in interleaved repeats on the same synthetic data: an uncached run
and a run with a fresh cache (its first epoch fills the cache, later epochs read it), each with
``--epochs`` epochs; the epoch times are the ``seconds`` of their ``train_log.jsonl``. Printed:
every epoch's time, the medians, and the ratios cached / uncached; and whether the two runs'
final prompts are bit-identical. ``--batched-reference`` adds a run whose image encoder sees the
whole batch at once (how training encoded images before the cache; not bit-reproducible across
batch compositions) to show what encoding one image at a time costs.

On a shared machine torch's thread pool makes timings erratic; ``--threads 1`` (default) keeps
them comparable. Weights do not change the timing, so they are random.

Examples (the issue's measurements):
    python benchmarks/train_cache.py                       # tiny test backbone, 224 px
    python benchmarks/train_cache.py --backbone ViT-L-14-336 --image-size 518 --images 4 \\
        --batch-size 2 --epochs 2 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

import s2swclip.training.loop as train_module
from s2swclip.data.synthetic import generate_dataset
from s2swclip.model.checkpoint import load_prompts


def _epochs(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


def _run(data: Path, out: Path, args, **kw) -> list[dict]:
    train_module.train(data, out, backbone=args.backbone, weights=None, epochs=args.epochs,
                       batch_size=args.batch_size, image_size=args.image_size, seed=0, progress=False,
                       num_workers=args.workers, **kw)
    return _epochs(out)


def _batched(det, images):
    return det.encode_image(images.to(det.device, torch.float32))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="S2SW-Tiny-24L")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--images", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cache", default="disk", choices=("disk", "memory"))
    p.add_argument("--dtype", default="fp32", choices=("fp32", "fp16"))
    p.add_argument("--batched-reference", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    tmp = Path(tempfile.mkdtemp(prefix="s2sw-train-cache-"))
    data = generate_dataset(tmp / "data", classes=["pill"], n_train_good=1, n_test_good=args.images // 2,
                            n_test_defect=args.images - args.images // 2, image_size=256, seed=0)
    print(f"{args.backbone} at {args.image_size} px, {args.images} images, batch {args.batch_size}, "
          f"{args.epochs} epochs, {args.threads} thread(s), {args.workers} workers, cache {args.cache} "
          f"{args.dtype}; seconds per epoch:")
    uncached, filling, cached, batched, identical = [], [], [], [], []
    for r in range(args.repeats):
        t0 = time.perf_counter()
        u = _run(data, tmp / f"u{r}", args)
        where = "memory" if args.cache == "memory" else tmp / f"cache{r}"
        c = _run(data, tmp / f"c{r}", args, cache_features=where, cache_dtype=args.dtype)
        assert [e["features_cached"] for e in c] == [False] + [True] * (args.epochs - 1), c
        uncached += [e["seconds"] for e in u]
        filling.append(c[0]["seconds"])
        cached += [e["seconds"] for e in c[1:]]
        a = load_prompts(tmp / f"u{r}" / "prompts_last.safetensors").tensors
        b = load_prompts(tmp / f"c{r}" / "prompts_last.safetensors").tensors
        identical.append(all(torch.equal(a[k], b[k]) for k in a))
        line = (f"  repeat {r + 1}: uncached {[e['seconds'] for e in u]}  cached {[e['seconds'] for e in c]}"
                f" (first fills the cache)")
        if args.batched_reference:
            real = train_module.encode_per_image
            train_module.encode_per_image = _batched
            try:
                bt = _run(data, tmp / f"b{r}", args)
            finally:
                train_module.encode_per_image = real
            batched += [e["seconds"] for e in bt]
            line += f"  batched-encoder reference {[e['seconds'] for e in bt]}"
        print(line + f"  [{time.perf_counter() - t0:.0f} s]", flush=True)
    mu, mf, mc = statistics.median(uncached), statistics.median(filling), statistics.median(cached)
    print(f"median epoch: uncached {mu:.3f} s | cached, first (filling) {mf:.3f} s | cached, later {mc:.3f} s")
    print(f"ratio later cached / uncached epoch: {mc / mu:.3f}x   (first epoch {mf / mu:.3f}x)")
    if batched:
        mb = statistics.median(batched)
        print(f"batched-encoder reference epoch {mb:.3f} s: one-image-at-a-time encoding costs "
              f"{mu / mb:.3f}x on an uncached epoch")
    fp = "bit-identical" if all(identical) else "DIFFERENT"
    print(f"final prompts cached vs uncached: {fp}" + (" (expected to differ: fp16 cache)" if args.dtype == "fp16" else ""))


if __name__ == "__main__":
    main()
