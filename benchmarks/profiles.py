"""Product profiles: creation time for K = 4 and K = 16 good images, and predict latency with 1
vs 20 profiles loaded (one shared backbone), side by side in one process.

* **Creation**: ``ProfileStore.create`` end to end (decode the uploaded PNG bytes, build the bank
  on the backbone, write images + bank + manifest, switch the pointer), median over ``--rounds``.
* **Predict with N profiles loaded**: the service's per-request work for a profile (look the
  profile up in :class:`~s2swclip.profiles.LiveProfiles`, score a batch with its
  :class:`~s2swclip.profiles.ProfileScorer`), with 1 profile held and with ``--profiles`` held
  (each with its own bank in memory: copies of the first one's, so that 20 profiles do not cost
  20 bank builds), rounds interleaved, the scored profile rotating over those held.
* **Memory per reference** from the bank's tensor shapes (``G^2`` tokens x C x L layers x bytes)
  for the chosen backbone and, without loading it, for ViT-L-14-336 at 518 px.

The issue's target is ViT-L-14-336 at 518 px (the default); on a small shared CPU that takes
minutes per image, so ``--backbone S2SW-Tiny-24L --image-size 224`` measures the same code paths
with a tiny random backbone (the ratios, not the seconds, carry over).

    python benchmarks/profiles.py --backbone S2SW-Tiny-24L --image-size 224 --rounds 5
    python benchmarks/profiles.py                      # ViT-L-14-336, 518 px (slow on CPU)
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import os
import statistics
import tempfile
import time

import numpy as np
import torch
from PIL import Image


def png(seed: int, w: int = 640, h: int = 480) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def vit_l_bank_mib(image_size: int = 518, layers: int = 4) -> tuple[float, str]:
    """MiB per reference of ViT-L-14-336 from its open_clip config (no weights loaded)."""
    import open_clip

    from s2swclip.profiles import bank_bytes_per_reference

    cfg = open_clip.get_model_config("ViT-L-14-336")
    patch, dim = cfg["vision_cfg"]["patch_size"], cfg["embed_dim"]
    per = bank_bytes_per_reference(image_size, patch, dim, layers)
    grid = image_size // patch
    return per / 2**20, f"{layers} layers x {grid}x{grid} tokens x {dim} x 4 bytes"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="ViT-L-14-336")
    ap.add_argument("--weights", default=None, help="weights (default: random; timing is the same)")
    ap.add_argument("--image-size", type=int, default=518)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rounds", type=int, default=3, help="profile creations timed per K")
    ap.add_argument("--predict-rounds", type=int, default=20, help="interleaved predict rounds")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--profiles", type=int, default=20, help="profiles held in the second predict run")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    import s2swclip
    from s2swclip.profiles import GoodImage, LiveProfiles, ProfileScorer, ProfileStore

    det = s2swclip.load_detector(args.backbone, args.weights, None, image_size=args.image_size, device=args.device,
                                 untrained_ok=True)
    images = {k: [GoodImage(f"{i}.png", png(i)) for i in range(k)] for k in (4, 16)}
    with tempfile.TemporaryDirectory() as root:
        store = ProfileStore(root, det, max_profiles=10_000)
        store.create("warmup", images[4][:1])
        create_s = {4: [], 16: []}
        for r in range(args.rounds):
            for k in (4, 16):
                t = time.perf_counter()
                profile = store.create(f"k{k}-{r}", images[k])
                create_s[k].append(time.perf_counter() - t)
        disk = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(os.path.join(root, "k16-0"))
                   for f in fs)
    first = profile  # K = 16
    k4 = dataclasses.replace(first, banks=tuple(b[: b.shape[0] * 4 // 16].clone() for b in first.banks))
    one = LiveProfiles({"p0": dataclasses.replace(k4, name="p0")})
    many = LiveProfiles({f"p{i}": dataclasses.replace(k4, name=f"p{i}",
                                                      banks=tuple(b.clone() for b in k4.banks))
                         for i in range(args.profiles)})
    g = torch.Generator().manual_seed(0)
    pixels = torch.randn(args.batch, 3, args.image_size, args.image_size, generator=g).numpy()

    def request(live: LiveProfiles, i: int) -> None:
        ProfileScorer(det, live.get(f"p{i % len(live)}")).score(pixels)

    request(one, 0)  # warm-up (text features, allocator)
    lat = {"1 profile": [], f"{args.profiles} profiles": []}
    cpu = {name: [] for name in lat}
    for r in range(args.predict_rounds):
        for name, live in (("1 profile", one), (f"{args.profiles} profiles", many)):
            t, c = time.perf_counter(), time.process_time()
            request(live, r)
            lat[name].append((time.perf_counter() - t) / args.batch)
            cpu[name].append((time.process_time() - c) / args.batch)

    print(f"backbone {args.backbone}, image {args.image_size}, device {det.device}, threads {torch.get_num_threads()}, "
          f"rounds {args.rounds} (predict {args.predict_rounds}), load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    for k in (4, 16):
        med = statistics.median(create_s[k])
        print(f"create profile K={k:<2}: {med:8.3f} s median ({med / k:.3f} s per image; min {min(create_s[k]):.3f} s)")
    per_ref = first.nbytes / 16
    rows, dim, size = first.banks[0].shape[0] // 16, first.banks[0].shape[1], first.banks[0].element_size()
    print(f"bank: {per_ref / 2**20:.3f} MiB per reference here ({len(first.banks)} layers x {rows} tokens x {dim} x "
          f"{size} bytes); "
          f"K=16 profile on disk {disk / 2**20:.2f} MiB (bank + 16 PNGs)")
    mib, how = vit_l_bank_mib()
    print(f"ViT-L-14-336 at 518 px, from shapes: {mib:.2f} MiB per reference ({how}); bf16 half of it")
    ref, ref_cpu = statistics.median(lat["1 profile"]), statistics.median(cpu["1 profile"])
    for name, values in lat.items():
        med, med_cpu = statistics.median(values), statistics.median(cpu[name])
        print(f"predict with {name:<12} loaded: wall {med * 1000:8.2f} ms/image median (min {min(values) * 1000:.2f}), "
              f"ratio {med / ref:.3f}; CPU {med_cpu * 1000:8.2f} ms median (min {min(cpu[name]) * 1000:.2f}), "
              f"ratio {med_cpu / ref_cpu:.3f}")
    print(f"memory held by the banks: 1 profile {one.get('p0').nbytes / 2**20:.1f} MiB, {args.profiles} profiles "
          f"{sum(p.nbytes for p in many.all()) / 2**20:.1f} MiB; one backbone for all")


if __name__ == "__main__":
    main()
