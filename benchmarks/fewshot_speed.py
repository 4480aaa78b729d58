"""Cost of the few-normal-shot mode: ``predict()`` with K reference images next to ``predict()``
without, side by side in one process (interleaved rounds, median of each), on one backbone.

Runs: zero-shot (no references); K = 4 and K = 16 references (default weight 0.5: both branches);
K = 16 with a coreset; K = 4 with weight 1 (references only: the zero-shot branch is skipped).
Reported: seconds per image (median over the rounds of the wall clock and of the process's CPU
time, and the smallest CPU time: on a shared machine other programs disturb CPU time much less than
wall time, and the least disturbed round least), ratios to zero-shot, the bank's memory, the peak
memory of one call above the loaded model (CPU: resident set size; CUDA: allocator peak), the
few-shot work timed alone (nearest-neighbour map, resize and smoothing; the extra projections),
and the one-time costs (building the bank, coreset selection). Weights do not change the timing,
so random weights are used unless --weights is given.

The K = 16 bank is built once with ``set_references``; the K = 4 bank is its first four images'
rows (what ``set_references`` of those four images builds) and the coreset bank is selected from
the K = 16 bank with the same function ``set_references`` uses, so the references are not encoded
three times.

Example (the issue's target, CPU; one thread keeps the CPU time free of idle spinning):
    python benchmarks/fewshot_speed.py --backbone ViT-L-14-336 --image-size 518 --rounds 5 --threads 1
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from predict_speed import PeakMemory  # noqa: E402


def timed(fn, device) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - wall, time.process_time() - cpu


def median_time(fn, device, repeats: int) -> tuple[float, float]:
    runs = [timed(fn, device) for _ in range(repeats)]
    return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="ViT-L-14-336")
    ap.add_argument("--weights", default=None, help="weights (default: random; timing is the same)")
    ap.add_argument("--image-size", type=int, default=518)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--coreset", type=float, default=0.1)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    import s2swclip
    from s2swclip.model.detector import S2SWDetector
    from s2swclip.model.references import CORESET_PROJECTION_DIM, coreset_size, greedy_coreset

    base = s2swclip.load_detector(args.backbone, args.weights, None, image_size=args.image_size,
                                  device=args.device, precision=args.precision, untrained_ok=True)
    device, size = base.device, args.image_size
    g = torch.Generator().manual_seed(0)
    images = torch.randn(args.batch, 3, size, size, generator=g).to(device)
    refs = torch.randn(16, 3, size, size, generator=g).to(device)

    def sibling(**config):  # same backbone and prompts, its own references
        return S2SWDetector(base.backbone, base.prompts, base.config.replace(**config),
                            provenance=base.provenance).eval()

    k16 = sibling()
    t0 = time.perf_counter()
    k16.set_references(refs)
    build_s = time.perf_counter() - t0
    bank16 = k16.references
    rows_per_image = bank16.banks[0].shape[0] // 16
    meta = dict(layers=bank16.layers, stream=bank16.stream, image_size=size, coreset=None)

    k4 = sibling()
    k4.references.set([b[:4 * rows_per_image] for b in bank16.banks], num_references=4, **meta)
    k4w1 = sibling(few_shot_weight=1.0)
    k4w1.references.set([b[:4 * rows_per_image] for b in bank16.banks], num_references=4, **meta)
    core = sibling(coreset=args.coreset)
    t0 = time.perf_counter()
    core_banks = [b[greedy_coreset(b.float(), coreset_size(b.shape[0], args.coreset),
                                   projection_dim=CORESET_PROJECTION_DIM)] for b in bank16.banks]
    coreset_s = time.perf_counter() - t0
    core.references.set(core_banks, num_references=16, **dict(meta, coreset=args.coreset))

    runs = {"zero-shot (no references)": (base, None), "K=4, w=0.5": (k4, k4), "K=16, w=0.5": (k16, k16),
            f"K=16, coreset {args.coreset:g}, w=0.5": (core, core), "K=4, w=1 (references only)": (k4w1, k4w1)}
    outputs = {name: det.predict(images) for name, (det, _) in runs.items()}  # warm-up (text features too)
    times = {name: [] for name in runs}
    peaks = {name: 0 for name in runs}
    for _ in range(args.rounds):
        for name, (det, _) in runs.items():
            with PeakMemory(device) as pm:
                times[name].append(timed(lambda: det.predict(images), device))
            peaks[name] = max(peaks[name], pm.peak)

    def medians(name):
        return (statistics.median(t[0] for t in times[name]) / args.batch,
                statistics.median(t[1] for t in times[name]) / args.batch,
                min(t[1] for t in times[name]) / args.batch)

    ref_wall, ref_cpu, ref_min = medians("zero-shot (no references)")
    per_ref = bank16.nbytes / 16
    print(f"backbone {args.backbone}, image {size}, batch {args.batch}, device {device}, precision "
          f"{args.precision}, threads {torch.get_num_threads()}, rounds {args.rounds}, load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"{'run':<32}{'wall s':>8}{'ratio':>7}{'CPU s':>8}{'ratio':>7}{'min CPU':>8}{'ratio':>7}"
          f"{'bank MiB':>10}{'peak MiB':>10}")
    for name, (det, holder) in runs.items():
        wall, cpu, low = medians(name)
        bank = 0 if holder is None else holder.references.nbytes
        print(f"{name:<32}{wall:>8.3f}{wall / ref_wall:>7.3f}{cpu:>8.3f}{cpu / ref_cpu:>7.3f}{low:>8.3f}"
              f"{low / ref_min:>7.3f}{bank / 2**20:>10.1f}{peaks[name] / 2**20:>10.0f}")

    # the few-shot work alone, for K = 4: map (search, resize, smoothing) and the extra projections
    with torch.inference_mode():
        _, _, feats = k4.encode_image(images, bank16.layers, bank16.stream)
        work = lambda: k4.token_values_to_maps(  # noqa: E731
            torch.nn.functional.pad(k4.references.token_map(feats), (1, 0)), size)
        visual = base.backbone.clip.visual
        tokens = torch.randn(args.batch, feats[0].shape[1], visual.proj.shape[0], generator=g).to(device)
        proj = lambda: [visual.ln_post(tokens) @ visual.proj for _ in bank16.layers]  # noqa: E731
        map_wall, map_cpu = median_time(work, device, 5)
        proj_wall, proj_cpu = median_time(proj, device, 5)
    print(f"few-shot work alone, K=4: map {map_wall:.3f} s wall / {map_cpu:.3f} s CPU, "
          f"{len(bank16.layers)} extra projections {proj_wall:.3f} s / {proj_cpu:.3f} s; "
          f"(zero-shot + that) / zero-shot = {(ref_min + map_cpu + proj_cpu) / ref_min:.3f} (CPU time)")
    print(f"bank memory per reference image: {per_ref / 2**20:.2f} MiB ({len(bank16.layers)} layers x "
          f"{rows_per_image} tokens x {bank16.banks[0].shape[1]} x {bank16.banks[0].element_size()} bytes)")
    print(f"one-time: set_references of 16 images {build_s:.1f} s ({build_s / 16:.2f} s/image); "
          f"coreset {args.coreset:g} selection {coreset_s:.1f} s")
    fs16 = outputs["K=16, w=0.5"].few_shot_maps
    fsc = outputs[f"K=16, coreset {args.coreset:g}, w=0.5"].few_shot_maps
    print(f"coreset vs exact few-shot map: max |diff| {(fsc - fs16).abs().max().item():.3e}, "
          f"mean diff {(fsc - fs16).mean().item():.3e} (map range 0..{fs16.max().item():.3f})")


if __name__ == "__main__":
    main()
