"""The offline demo: synthetic data, a tiny random backbone, brief training, a test report.

Everything runs without network or downloaded weights. A random tiny backbone demonstrates the
pipeline, not accuracy; the printed commands show the real-weights workflow.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

DEMO_BACKBONE = "S2SW-Tiny-24L"
AUX_CLASSES = ("wood", "fabric", "bottle_cap", "pill")  # "auxiliary" set the prompts are trained on
TARGET_CLASSES = ("marble", "perforated", "nut")  # unseen categories for the zero-shot test

REAL_WORKFLOW = """\
With real CLIP weights (ViT-L/14@336 'openai', downloaded once by open_clip or passed as a file):
  s2swclip build-meta visa  /data/visa   &&  s2swclip build-meta mvtec /data/mvtec
  s2swclip train --data /data/visa --out runs/visa --preset visa-to-all
  s2swclip test  --data /data/mvtec --prompts runs/visa/prompts_last.safetensors --preset visa-to-all --out reports/mvtec
  s2swclip predict images/ --prompts runs/visa/prompts_last.safetensors --calibrate good_images/ --out results/
(offline: add --weights /path/to/ViT-L-14-336px.pt)"""


def run_demo(out_dir: str | Path = "demo_out", *, seed: int = 0, progress: bool = True,
             log: Callable[[str], None] = print, epochs: int = 3, image_size: int = 224) -> dict:
    """Generate data, train briefly, test; returns the report (also in ``out_dir/report.json``)."""
    from .api import load_detector
    from .data.synthetic import generate_dataset
    from .eval.report import format_markdown
    from .evaluate import evaluate_dataset
    from .train import train

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    log("s2swclip demo: a TINY RANDOM backbone (no pretrained weights) on synthetic data — it shows "
        "the pipeline working end to end, not the method's accuracy.")
    aux = generate_dataset(out / "data" / "aux", classes=list(AUX_CLASSES), n_train_good=4,
                           n_test_good=10, n_test_defect=14, image_size=256, seed=seed)
    target = generate_dataset(out / "data" / "target", classes=list(TARGET_CLASSES), n_train_good=4,
                              n_test_good=8, n_test_defect=10, image_size=256, seed=seed + 1)
    log(f"[{time.time() - t0:5.1f}s] synthetic datasets written under {out / 'data'}")
    result = train(aux, out / "train", backbone=DEMO_BACKBONE, weights=None, preset="visa-to-all",
                   epochs=epochs, batch_size=8, image_size=image_size, seed=seed, progress=progress,
                   log=log)
    log(f"[{time.time() - t0:5.1f}s] prompts trained: {result.checkpoint}")
    det = load_detector(DEMO_BACKBONE, None, result.checkpoint, image_size=image_size)
    report = evaluate_dataset(det, target, dataset_name="synthetic-target", batch_size=8, out_dir=out,
                              figures_per_class=2, progress=progress, log=log)
    log(format_markdown(report))
    log(f"[{time.time() - t0:5.1f}s] report: {out / 'report.json'}, figures: {out / 'figures'}")
    log(REAL_WORKFLOW)
    (out / "demo_info.json").write_text(json.dumps({
        "backbone": DEMO_BACKBONE, "weights": None, "note": "random tiny backbone: pipeline demo, not accuracy",
        "train_history": result.history, "seconds": round(time.time() - t0, 1)}, indent=2))
    return report
