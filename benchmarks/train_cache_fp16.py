"""What an fp16 feature cache (``train --cache-features DIR --cache-dtype fp16``) changes.

Trains the same run twice on synthetic data, with an fp32 cache (bit-identical to no cache) and
with an fp16 cache (every image's features rounded to float16 in every epoch), and prints: the
cache sizes, how far the final prompts are apart (largest difference, and relative to how far
training moved them from their initialisation), and what that does to a held-out set: the
largest difference of image scores and of anomaly maps, and the image AUROC and pixel AUROC of
both runs.

Example:
    python benchmarks/train_cache_fp16.py --classes 3 --epochs 3
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

import s2swclip
from s2swclip.data.dataset import AnomalyDataset
from s2swclip.data.synthetic import generate_dataset
from s2swclip.eval.metrics import image_auroc, pixel_auroc
from s2swclip.model.checkpoint import load_prompts
from s2swclip.training.loop import train

CLASSES = ["wood", "fabric", "marble", "perforated", "bottle_cap", "pill", "nut"]


def _predict(det, root: Path, size: int):
    ds = AnomalyDataset(root, image_size=size)
    scores, maps, labels, masks = [], [], [], []
    for batch in torch.utils.data.DataLoader(ds, batch_size=8):
        out = det.predict(batch["image"])
        scores.append(out.image_scores.numpy())
        maps.append(out.anomaly_maps.numpy())
        labels.append(batch["label"].numpy())
        masks.append(batch["mask"].numpy())
    return [np.concatenate(x) for x in (scores, maps, labels, masks)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="S2SW-Tiny-24L")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--classes", type=int, default=3)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="s2sw-fp16-"))
    classes = CLASSES[: args.classes]
    aux = generate_dataset(tmp / "aux", classes=classes, n_train_good=1, n_test_good=6, n_test_defect=10,
                           image_size=256, seed=0)
    held_out = generate_dataset(tmp / "held", classes=classes, n_train_good=1, n_test_good=6, n_test_defect=10,
                                image_size=256, seed=1)
    kw = dict(backbone=args.backbone, weights=None, epochs=args.epochs, batch_size=8, image_size=args.image_size,
              seed=3, progress=False)
    sizes, prompts, outputs = {}, {}, {}
    for dtype in ("fp32", "fp16"):
        train(aux, tmp / dtype, cache_features=tmp / f"cache-{dtype}", cache_dtype=dtype, **kw)
        sizes[dtype] = sum(f.stat().st_size for f in (tmp / f"cache-{dtype}").rglob("*.safetensors"))
        prompts[dtype] = load_prompts(tmp / dtype / "prompts_last.safetensors").tensors
        det = s2swclip.load_detector(args.backbone, None, str(tmp / dtype / "prompts_last.safetensors"),
                                     image_size=args.image_size)
        outputs[dtype] = _predict(det, held_out, args.image_size)
    init = s2swclip.load_detector(args.backbone, None, None, image_size=args.image_size, seed=3,
                                  untrained_ok=True).prompts.parameter_tensors()
    diff = max(float((prompts["fp16"][k] - prompts["fp32"][k]).abs().max()) for k in init)
    moved = max(float((prompts["fp32"][k] - init[k].detach()).abs().max()) for k in init)
    print(f"{args.backbone} at {args.image_size} px, {len(AnomalyDataset(aux))} training images, {args.epochs} epochs")
    print(f"cache size: fp32 {sizes['fp32'] / 1e6:.2f} MB, fp16 {sizes['fp16'] / 1e6:.2f} MB "
          f"({sizes['fp16'] / sizes['fp32']:.3f}x)")
    print(f"final prompts: largest difference fp16 - fp32 {diff:.3e}; training moved them by up to {moved:.3e} "
          f"(ratio {diff / moved:.3e})")
    (s32, m32, y, masks), (s16, m16, _, _) = outputs["fp32"], outputs["fp16"]
    print(f"held-out set ({len(y)} images): largest score difference {np.abs(s16 - s32).max():.3e}, "
          f"largest map difference {np.abs(m16 - m32).max():.3e} (maps span {m32.min():.3f}..{m32.max():.3f})")
    print(f"image AUROC fp32 {image_auroc(y, s32):.4f} fp16 {image_auroc(y, s16):.4f}; "
          f"pixel AUROC fp32 {pixel_auroc(masks, m32):.4f} fp16 {pixel_auroc(masks, m16):.4f}")


if __name__ == "__main__":
    main()
