"""Training the prompt parameters on an auxiliary annotated dataset (spec sections 1 and 7).

Checkpoints are written after every epoch, atomically: ``prompts_epochNNN.safetensors``,
``prompts_last.safetensors`` (this package's prompt format) and ``train_state.pt`` (optimizer,
RNG and history, for ``resume``). A log goes to ``train.log``.
"""

from __future__ import annotations

import dataclasses
import io
import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from . import __version__
from .errors import S2SWError
from .fileio import atomic_write_bytes
from .model.checkpoint import load_prompts, save_prompts
from .model.config import TrainConfig, get_preset
from .model.objective import s2sw_objective

LOSS_KEYS = ("total", "pixel_generic", "pixel_contrastive", "image_ce", "pairwise")


@dataclass
class TrainResult:
    checkpoint: Path
    history: list[dict[str, float]]
    config: TrainConfig


def resolve_train_config(preset: str | None = None, **overrides: Any) -> TrainConfig:
    """A preset's values (``visa-to-all`` by default), then explicit non-None overrides."""
    cfg = TrainConfig()
    values = dict(get_preset(preset or "visa-to-all").train)
    values.update({k: v for k, v in overrides.items() if v is not None})
    unknown = set(values) - {f.name for f in dataclasses.fields(TrainConfig)}
    if unknown:
        raise S2SWError(f"unknown training option(s): {', '.join(sorted(unknown))}")
    return dataclasses.replace(cfg, **values)


def train(
    data_root: str | Path,
    out_dir: str | Path,
    *,
    backbone: str = "ViT-L-14-336",
    weights: str | None = "openai",
    preset: str | None = "visa-to-all",
    device: str = "cpu",
    precision: str = "fp32",
    split: str = "test",
    classes: Sequence[str] | None = None,
    resume: bool = False,
    progress: bool = True,
    max_batches: int | None = None,
    num_workers: int = 0,
    detector_options: dict[str, Any] | None = None,
    init_prompts: str | Path | None = None,
    log: Callable[[str], None] | None = None,
    **overrides: Any,
) -> TrainResult:
    """Learn the prompts on ``data_root`` (a ``meta.json`` dataset) and checkpoint to ``out_dir``.

    Args:
        data_root: dataset root holding ``meta.json``; its ``split`` (default ``test``, as in
            the paper: the auxiliary set's annotated test split) is used for training.
        out_dir: where checkpoints and logs go.
        backbone, weights, device, precision: as in :func:`s2swclip.load_detector` (precision
            applies to the frozen image encoder; the text encoder trains in float32).
        preset: ``visa-to-all`` or ``mvtec-to-visa`` (defaults for the values below).
        resume: continue from ``out_dir/train_state.pt`` if present.
        init_prompts: start from this prompt checkpoint (either format) instead of N(0, 0.02).
        max_batches: stop each epoch after this many batches (quick runs, tests).
        **overrides: TrainConfig fields: epochs, batch_size, image_size, lr, betas, seed,
            alpha, beta, random_pair_prob, pairwise_hinge.

    Returns:
        :class:`TrainResult` with the last checkpoint path and per-epoch mean losses.
    """
    from .api import load_detector
    from .data.dataset import AnomalyDataset

    cfg = resolve_train_config(preset, **overrides)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    log_path = out_dir / "train.log"

    def say(msg: str) -> None:
        with open(log_path, "a") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {msg}\n")
        if log is not None:
            log(msg)

    dataset = AnomalyDataset(data_root, split=split, image_size=cfg.image_size, classes=classes)
    if len(dataset) == 0:
        raise S2SWError(f"no '{split}' items in {Path(data_root) / 'meta.json'}: nothing to train on")

    torch.manual_seed(cfg.seed)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="no prompt checkpoint given")
        det = load_detector(backbone, weights, init_prompts, image_size=cfg.image_size, device=device,
                            precision=precision, seed=cfg.seed, **(detector_options or {}))
    det.train()
    optimizer = torch.optim.Adam(det.prompts.parameters(), lr=cfg.lr, betas=tuple(cfg.betas))
    shuffle_gen = torch.Generator().manual_seed(cfg.seed)
    pair_gen = torch.Generator().manual_seed(cfg.seed + 1)
    history: list[dict[str, float]] = []
    start_epoch = 0

    state_path = out_dir / "train_state.pt"
    if resume and state_path.is_file():
        try:
            state = torch.load(state_path, map_location="cpu", weights_only=True)
            load_prompts(out_dir / "prompts_last.safetensors").apply(det.prompts)
            optimizer.load_state_dict(state["optimizer"])
            shuffle_gen.set_state(state["shuffle_rng"])
            pair_gen.set_state(state["pair_rng"])
            history = json.loads(state["history"])
            start_epoch = int(state["epoch"])
        except S2SWError:
            raise
        except Exception as e:
            raise S2SWError(f"cannot resume from {state_path}: {e}; delete it to start afresh") from None
        say(f"resumed from epoch {start_epoch}")
    elif resume:
        say(f"no {state_path.name} in {out_dir}: starting from scratch")

    loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.batch_size, shuffle=True,
                                         generator=shuffle_gen, num_workers=num_workers)
    say(f"training on {len(dataset)} images of {len(dataset.classes)} classes from {data_root}; "
        f"{json.dumps(dataclasses.asdict(cfg))}")
    last = out_dir / "prompts_last.safetensors"
    if start_epoch >= cfg.epochs:
        say(f"already trained for {start_epoch} epochs")
    for epoch in range(start_epoch, cfg.epochs):
        det.train()
        sums = {k: 0.0 for k in LOSS_KEYS}
        n = 0
        total_batches = len(loader) if max_batches is None else min(len(loader), max_batches)
        bar = _progress(total_batches, f"epoch {epoch + 1}/{cfg.epochs}", progress)
        for i, batch in enumerate(loader):
            if max_batches is not None and i >= max_batches:
                break
            losses = s2sw_objective(det, batch["image"], batch["mask"], batch["label"],
                                    alpha=cfg.alpha, beta=cfg.beta, generator=pair_gen,
                                    random_pair_prob=cfg.random_pair_prob,
                                    pairwise_hinge=cfg.pairwise_hinge)
            optimizer.zero_grad(set_to_none=True)
            losses["total"].backward()
            optimizer.step()
            for k in LOSS_KEYS:
                sums[k] += float(losses[k].detach())
            n += 1
            if bar is not None:
                bar.set_postfix({k: f"{sums[k] / n:.4f}" for k in ("total", "pixel_generic", "pixel_contrastive", "image_ce")})
                bar.update(1)
        if bar is not None:
            bar.close()
        means = {k: sums[k] / max(n, 1) for k in LOSS_KEYS}
        history.append({"epoch": epoch + 1, **means})
        meta = {"backbone": det.provenance.get("backbone"), "weights": det.provenance.get("weights"),
                "epoch": epoch + 1, "preset": preset, "train_config": dataclasses.asdict(cfg),
                "data_root": str(data_root), "s2swclip_version": __version__,
                "detector_config": det.config.to_dict()}
        save_prompts(out_dir / f"prompts_epoch{epoch + 1:03d}.safetensors", det.prompts, meta)
        save_prompts(last, det.prompts, meta)
        buf = io.BytesIO()
        torch.save({"optimizer": optimizer.state_dict(), "shuffle_rng": shuffle_gen.get_state(),
                    "pair_rng": pair_gen.get_state(), "history": json.dumps(history),
                    "epoch": epoch + 1}, buf)
        atomic_write_bytes(state_path, buf.getvalue())
        say(f"epoch {epoch + 1}/{cfg.epochs} " + " ".join(f"{k}={v:.5f}" for k, v in means.items()))
    det.eval()
    return TrainResult(last, history, cfg)


def _progress(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="batch", leave=False, dynamic_ncols=True)
