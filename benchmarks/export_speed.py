"""Speed, parity and drift of exported detectors next to PyTorch, side by side in one process.

Exports the detector (``s2swclip export``, each in its own child process so that its time and
peak memory are its own) to ONNX fp32 and OpenVINO fp32 / bf16 / int8, then times, in
interleaved rounds (median reported), on the same images:

* PyTorch fp32 plain ``encode_image`` of open_clip (the reference, 1.00),
* PyTorch fp32 ``predict`` (today's path),
* each exported whole detector through :mod:`s2swclip.deploy.runtime` (image in; score and map out),

and prints wall and process CPU time per image (CPU time, summed over the engine's threads, is
disturbed much less by other jobs on a shared machine), the parity (float32 exports; targets: scores <= 1e-5, maps <= 1e-4) or drift
(bf16 / int8) of each export against PyTorch ``predict`` on the benchmark images, plus export
time and peak memory. Weights do not change the timing, so random weights are used
(``weights=None``); int8 is calibrated on synthetic normal images (``s2swclip.data.synthetic``).
All engines get the same number of threads (``--threads``, default 2).

Issue targets (ViT-L-14-336, 518 px, batch 1, 2 cores, ratio to plain encode_image):
OpenVINO fp32 <= 0.78, OpenVINO bf16 <= 0.45, OpenVINO int8 <= 0.35, ONNX Runtime fp32 <= 0.90.

    python benchmarks/export_speed.py --work /tmp/export_bench            # exports, then times
    python benchmarks/export_speed.py --work /tmp/export_bench --reuse    # times existing exports
    python benchmarks/export_speed.py --backbone S2SW-Tiny-24L --image-size 224 --work /tmp/tiny
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

EXPORTS = [("onnx", "fp32"), ("openvino", "fp32"), ("openvino", "bf16"), ("openvino", "int8")]


def make_images(work: Path, size: int, n_calibrate: int, n_bench: int) -> tuple[Path, list[str]]:
    """Synthetic normal images: a calibration folder and the benchmark images."""
    from s2swclip.data.synthetic import generate_dataset

    root = work / "data"
    if not (root / "meta.json").exists():
        generate_dataset(root, classes=["wood"], n_train_good=n_calibrate, n_test_good=n_bench,
                         n_test_defect=0, image_size=min(size, 512), seed=0)
    good = sorted(str(p) for p in (root / "wood" / "test" / "good").glob("*.png"))
    return root / "wood" / "train" / "good", good[:n_bench]


def run_export(args, fmt: str, precision: str, calibrate: Path) -> Path:
    out = Path(args.work) / f"{fmt}-{precision}"
    if args.reuse and (out / "s2swclip.json").exists():
        return out
    if out.exists():
        import shutil

        shutil.rmtree(out)
    cmd = [sys.executable, "-m", "s2swclip.cli", "export", "--format", fmt, "--precision", precision,
           "--out", str(out), "--backbone", args.backbone, "--weights", "none", "--image-size",
           str(args.image_size), "--calibrate", str(calibrate), "--calibrate-max", str(args.calibrate_max),
           "--quiet"]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    print(f"exporting {fmt} {precision} ...", flush=True)
    subprocess.run(cmd, check=True, env=env)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="ViT-L-14-336")
    ap.add_argument("--image-size", type=int, default=518)
    ap.add_argument("--work", required=True, help="folder for the exports and the synthetic images")
    ap.add_argument("--reuse", action="store_true", help="reuse exports already in --work")
    ap.add_argument("--exports", nargs="+", default=[f"{f}-{p}" for f, p in EXPORTS],
                    help="which exports to run (default: all four)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--calibrate-max", type=int, default=8)
    ap.add_argument("--images", type=int, default=2, help="benchmark images (parity/drift)")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    calibrate, bench_paths = make_images(work, args.image_size, args.calibrate_max, args.images)
    wanted = [(f, p) for f, p in EXPORTS if f"{f}-{p}" in args.exports]
    folders = {f"{f} {p}": run_export(args, f, p, calibrate) for f, p in wanted}

    import open_clip
    import torch

    import s2swclip
    from s2swclip.data.images import decode_for_model
    from s2swclip.model.weights import resolve_model_config

    torch.set_num_threads(args.threads)
    det = s2swclip.load_detector(args.backbone, None, None, image_size=args.image_size, untrained_ok=True)
    # open_clip's own model built for this input size, so that plain encode_image runs the
    # same architecture at the same token count
    _, cfg = resolve_model_config(args.backbone)
    cfg = dict(cfg, quick_gelu=det.provenance["quick_gelu"])
    cfg["vision_cfg"] = dict(cfg["vision_cfg"], image_size=args.image_size)
    cfg.pop("custom_text", None)
    clip = open_clip.CLIP(**cfg).eval()
    pixels = np.stack([decode_for_model(p, args.image_size).pixels for p in bench_paths])
    one = torch.from_numpy(pixels[:1])

    def encode():
        with torch.inference_mode():
            return clip.encode_image(one)

    runs = {"pytorch encode_image fp32": encode, "pytorch predict fp32": lambda: det.predict(one)}
    models = {name: s2swclip.load_exported(folder, threads=args.threads) for name, folder in folders.items()}
    for name, model in models.items():
        runs[f"{name}"] = (lambda m: (lambda: m.predict(pixels[:1])))(model)

    # parity / drift on all benchmark images, against PyTorch predict
    ref = det.predict(torch.from_numpy(pixels))
    ref_s, ref_m = ref.image_scores.numpy(), ref.anomaly_maps.numpy()
    quality = {}
    for name, model in models.items():
        outs = [model.predict(pixels[i:i + 1]) for i in range(len(pixels))]
        got_s = np.concatenate([o.image_scores for o in outs])
        got_m = np.concatenate([o.anomaly_maps for o in outs])
        quality[name] = (float(np.abs(got_s - ref_s).max()), float(np.abs(got_m - ref_m).max()))

    for fn in runs.values():  # warm-up
        fn()
    times = {name: [] for name in runs}
    cpu = {name: [] for name in runs}  # process CPU time (all threads): disturbed less by other jobs
    for _ in range(args.rounds):
        for name, fn in runs.items():
            t, c = time.perf_counter(), time.process_time()
            fn()
            times[name].append(time.perf_counter() - t)
            cpu[name].append(time.process_time() - c)

    base = statistics.median(times["pytorch encode_image fp32"])
    cpu_base = statistics.median(cpu["pytorch encode_image fp32"])
    print(f"\nbackbone {args.backbone} (random weights), image {args.image_size}, batch 1, threads {args.threads}, "
          f"rounds {args.rounds} (median), {len(pixels)} benchmark image(s), load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"{'run':<28}{'s/image':>9}{'ratio':>7}{'CPU s':>8}{'ratio':>7}{'max|d score|':>14}{'max|d map|':>12}"
          f"{'export s':>10}{'export peak MiB':>17}{'inference':>11}")
    for name in runs:
        med = statistics.median(times[name])
        q = quality.get(name)
        qs = f"{q[0]:>14.2e}{q[1]:>12.2e}" if q else f"{'':>14}{'':>12}"
        ex = ""
        if name in models:
            m = models[name].manifest
            eff = ",".join(models[name].describe()["inference_precision"] or [])
            rec = m.export or {}
            ex = f"{rec.get('seconds', float('nan')):>10.0f}{str(rec.get('peak_rss_mib')):>17}{eff:>11}"
        c = statistics.median(cpu[name])
        print(f"{name:<28}{med:>9.2f}{med / base:>7.2f}{c:>8.2f}{c / cpu_base:>7.2f}{qs}{ex}")
    print(json.dumps({"ratios": {k: round(statistics.median(v) / base, 3) for k, v in times.items()},
                      "cpu_ratios": {k: round(statistics.median(v) / cpu_base, 3) for k, v in cpu.items()},
                      "quality": quality}))


if __name__ == "__main__":
    main()
