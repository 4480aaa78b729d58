"""Speed and memory of ``predict()`` next to open_clip's plain ``encode_image`` (fp32).

Measured side by side in one process, in interleaved rounds (the median of each is reported), on
the same model. Weights do not change the timing, so random weights are used unless --weights
is given. Peak memory: CUDA allocator peak on GPU; on CPU the peak resident set size above the
level before the call (freed heap returned to the OS first, then sampled every 2 ms), i.e. the
working memory of one call beyond the loaded model.

Example (the issue's targets, CPU, 2 cores):
    python benchmarks/predict_speed.py --backbone ViT-L-14-336 --image-size 518 --batch 1 \\
        --precision fp32 bf16 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time

import open_clip
import torch


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _release_free_memory() -> None:
    """Give freed heap pages back to the OS so that RSS reflects live memory (glibc only)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """Context manager measuring peak memory above the starting level."""

    def __init__(self, device: torch.device):
        self.device, self.peak = device, 0

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            _release_free_memory()
            self.base, self._stop = _rss_bytes(), threading.Event()
            self._max = self.base

            def sample():
                while not self._stop.is_set():
                    self._max = max(self._max, _rss_bytes())
                    time.sleep(0.002)

            self._thread = threading.Thread(target=sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.base
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self._max, _rss_bytes()) - self.base


def timed(fn, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="ViT-L-14-336")
    ap.add_argument("--weights", default=None, help="weights (default: random; timing is the same)")
    ap.add_argument("--image-size", type=int, default=518)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--precision", nargs="+", default=["fp32", "bf16"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    import s2swclip

    dets = {}
    for prec in args.precision:
        det = s2swclip.load_detector(args.backbone, args.weights, None, image_size=args.image_size,
                                     device=args.device, precision=prec)
        if dets:  # share one backbone: same weights, less memory
            det.backbone = next(iter(dets.values())).backbone
            det.prompts.load_state_dict(next(iter(dets.values())).prompts.state_dict())
        dets[prec] = det
    base = next(iter(dets.values()))
    device = base.device
    # open_clip's own model built for this input size (its positional table at that size), so
    # that plain encode_image runs the same architecture at the same token count
    from s2swclip.model.weights import resolve_model_config

    _, cfg = resolve_model_config(args.backbone)
    cfg = dict(cfg, quick_gelu=base.provenance["quick_gelu"])
    cfg["vision_cfg"] = dict(cfg["vision_cfg"], image_size=args.image_size)
    cfg.pop("custom_text", None)
    clip = open_clip.CLIP(**cfg).eval().to(device)
    g = torch.Generator().manual_seed(0)
    images = torch.randn(args.batch, 3, args.image_size, args.image_size, generator=g).to(device)

    def encode():
        with torch.inference_mode():
            return clip.encode_image(images)

    runs = {"encode_image fp32": encode}
    for prec, det in dets.items():
        runs[f"predict {prec}"] = (lambda d: (lambda: d.predict(images)))(det)

    # warm-up (also builds the cached text features), then the reference outputs
    outputs = {name: fn() for name, fn in runs.items()}
    times = {name: [] for name in runs}
    peaks = {name: 0 for name in runs}
    for _ in range(args.rounds):
        for name, fn in runs.items():
            with PeakMemory(device) as pm:
                dt, _ = timed(fn, device)
            times[name].append(dt)
            peaks[name] = max(peaks[name], pm.peak)

    ref = statistics.median(times["encode_image fp32"])
    print(f"backbone {args.backbone}, image {args.image_size}, batch {args.batch}, device {device}, "
          f"threads {torch.get_num_threads()}, rounds {args.rounds}")
    print(f"{'run':<22}{'s/image':>10}{'ratio':>8}{'peak MiB':>10}")
    for name in runs:
        med = statistics.median(times[name])
        print(f"{name:<22}{med / args.batch:>10.3f}{med / ref:>8.2f}{peaks[name] / 2**20:>10.0f}")
    if "fp32" in dets:
        m32 = outputs["predict fp32"].anomaly_maps
        s32 = outputs["predict fp32"].image_scores
        for prec in dets:
            if prec == "fp32":
                continue
            o = outputs[f"predict {prec}"]
            print(f"{prec} vs fp32: max |map diff| {(o.anomaly_maps - m32).abs().max().item():.2e}, "
                  f"max |score diff| {(o.image_scores - s32).abs().max().item():.2e}")


if __name__ == "__main__":
    main()
