"""One short GPU check: CUDA results against CPU, every precision, and timings.

Meant for a machine with a CUDA device (run it there in one go):
    python benchmarks/device_check.py            # tiny model parity + ViT-L timings
    python benchmarks/device_check.py --no-timings   # the parity only
    python -m pytest tests -k cuda -q            # the CUDA-only unit tests

It prints, for the tiny paper-topology model with random weights, the largest differences
between CUDA (fp32 / bf16 / fp16) and CPU fp32 outputs, then ``predict`` timings of
ViT-L-14-336 at 518 px next to open_clip's plain ``encode_image`` (benchmarks/predict_speed.py).
"""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import torch


def main() -> int:
    timings = "--no-timings" not in sys.argv[1:]
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check here")
        return 1
    import s2swclip

    warnings.filterwarnings("ignore", message="no prompt checkpoint given")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    images = torch.randn(4, 3, 518, 518, generator=torch.Generator().manual_seed(0))
    ref = s2swclip.load_detector("S2SW-Tiny-24L", None, None, image_size=518).predict(images)
    print(f"device: {torch.cuda.get_device_name(0)}")
    for precision in ("fp32", "bf16", "fp16"):
        det = s2swclip.load_detector("S2SW-Tiny-24L", None, None, image_size=518, device="cuda",
                                     precision=precision)
        out = det.predict(images).cpu()
        print(f"cuda {precision} vs cpu fp32: max |map diff| "
              f"{(out.anomaly_maps - ref.anomaly_maps).abs().max().item():.2e}, max |score diff| "
              f"{(out.image_scores - ref.image_scores).abs().max().item():.2e}")
    bench = Path(__file__).with_name("predict_speed.py")
    for batch in (1, 8) if timings else ():
        subprocess.run([sys.executable, str(bench), "--device", "cuda", "--batch", str(batch),
                        "--precision", "fp32", "bf16", "fp16", "--rounds", "5"], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
