"""The offline demo: synthetic data, a tiny random backbone, brief training, a test report, and
the few-normal-shot mode (the held-out categories' normal train images as references).

Everything runs without network or downloaded weights. A random tiny backbone demonstrates the
pipeline, not accuracy; the printed commands show the real-weights workflow.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from .fileio import atomic_write_text, check_output_dir

log = logging.getLogger(__name__)

DEMO_BACKBONE = "S2SW-Tiny-24L"
CLASSES = ("wood", "fabric", "marble", "perforated", "bottle_cap", "pill", "nut")

REAL_WORKFLOW = """\
With real CLIP weights (ViT-L/14@336 'openai', downloaded once by open_clip or passed as a file):
  s2swclip build-meta visa  /data/visa   &&  s2swclip build-meta mvtec /data/mvtec
  s2swclip train --data /data/visa --out runs/visa --preset visa-to-all
  s2swclip test  --data /data/mvtec --prompts runs/visa/prompts_last.safetensors --preset visa-to-all --out reports/mvtec
  s2swclip predict images/ --prompts runs/visa/prompts_last.safetensors --calibrate good_images/ --out results/
  s2swclip predict images/ --reference good_images/ --few-shot-weight 1 --out results/   # no training at all
(offline: add --weights /path/to/ViT-L-14-336px.pt)"""


def _log_lines(text: str) -> None:
    """Log ``text`` one message a line: the command line shows each message as one line (it
    escapes line breaks inside a message), so a table logged whole would print as one long line."""
    for line in text.rstrip("\n").split("\n"):
        log.info(line)


def run_demo(out_dir: str | Path = "demo_out", *, seed: int = 0, progress: bool = True,
             epochs: int = 5, image_size: int = 224) -> dict:
    """Generate data, train briefly, test zero-shot and few-shot; returns the zero-shot report (also in
    ``out_dir/report.json``; the few-shot numbers are in ``out_dir/demo_info.json``)."""
    from .api import load_detector
    from .data.synthetic import generate_dataset
    from .eval.report import format_markdown
    from .eval.protocol import evaluate_dataset
    from .training.loop import train

    out = check_output_dir(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    log.info("s2swclip demo: a TINY RANDOM backbone (no pretrained weights) on synthetic data — it shows "
        "the pipeline working end to end, not the method's accuracy.")
    # A random backbone has no semantics to carry over to unseen categories, so the demo tests on
    # held-out images of the training categories; zero-shot transfer needs real CLIP weights.
    aux = generate_dataset(out / "data" / "train_set", classes=list(CLASSES), n_train_good=2,
                           n_test_good=6, n_test_defect=10, image_size=256, seed=seed)
    target = generate_dataset(out / "data" / "held_out", classes=list(CLASSES), n_train_good=2,
                              n_test_good=6, n_test_defect=10, image_size=256, seed=seed + 1)
    log.info(f"[{time.time() - t0:5.1f}s] synthetic datasets written under {out / 'data'} "
        f"(training set and held-out images of {len(CLASSES)} categories)")
    result = train(aux, out / "train", backbone=DEMO_BACKBONE, weights=None, preset="visa-to-all",
                   epochs=epochs, batch_size=8, image_size=image_size, seed=seed, progress=progress)
    log.info(f"[{time.time() - t0:5.1f}s] prompts trained: {result.checkpoint}")
    untrained = load_detector(DEMO_BACKBONE, None, None, image_size=image_size, seed=seed, untrained_ok=True)
    before = evaluate_dataset(untrained, target, dataset_name="held-out (untrained prompts)",
                              batch_size=8, progress=False)
    det = load_detector(DEMO_BACKBONE, None, result.checkpoint, image_size=image_size)
    report = evaluate_dataset(det, target, dataset_name="synthetic-held-out", batch_size=8, out_dir=out,
                              figures_per_class=2, progress=progress)
    _log_lines(format_markdown(report))
    log.info("effect of training on the held-out images (mean over categories): " + ", ".join(
        f"{k} {before['mean'][k]:.3f} -> {report['mean'][k]:.3f}"
        for k in ("pixel_auroc", "pixel_aupro", "image_auroc")))
    few_shot = _few_shot_step(det, untrained, target, report, seed=seed)
    log.info(f"[{time.time() - t0:5.1f}s] report: {out / 'report.json'}, figures: {out / 'figures'}")
    _log_lines(REAL_WORKFLOW)
    atomic_write_text(out / "demo_info.json", json.dumps({
        "backbone": DEMO_BACKBONE, "weights": None, "note": "random tiny backbone: pipeline demo, not accuracy",
        "train_history": result.history, "held_out_untrained_mean": before["mean"], "few_shot": few_shot,
        "seconds": round(time.time() - t0, 1)}, indent=2))
    return report


FEW_SHOT_KEYS = ("pixel_auroc", "pixel_aupro", "image_auroc")


def _few_shot_step(det, untrained, target, zero_shot: dict, *, seed: int, shots: int = 2) -> dict:
    """Zero-shot vs few-shot on the held-out images: ``shots`` normal train images per category as
    references, fused with the trained prompts (``det``, w = 0.5) and alone (``untrained``, w = 1)."""
    from .eval.protocol import evaluate_few_shot

    t0 = time.time()
    fused = evaluate_few_shot(det, target, dataset_name="held-out, few-shot", batch_size=8, progress=False,
                              shots=shots, seeds=[seed])
    untrained.config = untrained.config.replace(few_shot_weight=1.0)
    only = evaluate_few_shot(untrained, target, dataset_name="held-out, references only", batch_size=8,
                             progress=False, shots=shots, seeds=[seed])
    rows = {"zero-shot (trained prompts)": zero_shot["mean"],
            f"few-shot, {shots} refs/class, w=0.5": fused["mean"],
            f"references only, {shots} refs/class, w=1": only["mean"]}
    width = max(map(len, rows))
    lines = [f"zero-shot vs few-shot on the held-out images (mean over categories; random tiny backbone; "
             f"few-shot runs took {time.time() - t0:.1f} s):",
             f"  {'':<{width}}  " + "  ".join(f"{k:>11}" for k in FEW_SHOT_KEYS)]
    for name, mean in rows.items():
        lines.append(f"  {name:<{width}}  " + "  ".join(
            f"{mean[k]:>11.3f}" if mean[k] is not None else f"{'n/a':>11}" for k in FEW_SHOT_KEYS))
    _log_lines("\n".join(lines))
    return {"shots": shots, "seed": seed, "references": fused["few_shot"]["references"],
            "mean": {name: {k: mean[k] for k in FEW_SHOT_KEYS} for name, mean in rows.items()}}
