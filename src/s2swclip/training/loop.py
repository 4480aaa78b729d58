"""Training the prompt parameters on an auxiliary annotated dataset (spec sections 1 and 7).

Each epoch ends with ONE atomic commit, ``train_state.safetensors`` (prompts, optimizer, random
generators, epoch, history, log records and a fingerprint of the run's configuration; see
:mod:`s2swclip.training.state`). Derived from it afterwards, each written atomically:
``prompts_epochNNN.safetensors`` and ``prompts_last.safetensors`` (this package's prompt format)
and ``train_log.jsonl`` (one JSON object per epoch: epoch, seconds, every loss term, the learning
rate, whether features came from a cache). With ``cache_features`` the frozen image encoder's
outputs are computed once per image and read back in later epochs (:mod:`s2swclip.training.feature_cache`;
the images are encoded one at a time with or without it, so an fp32 cache changes nothing in the
results). ``resume`` continues from the state and re-derives
whatever a crash left missing or stale, so a run killed at any moment and resumed ends
bit-identical to an uninterrupted one. Messages go to ``logging.getLogger("s2swclip.training.loop")`` and
are appended to ``train.log``.

The steps: :func:`start_run` (check the options, build the detector and optimizer, resume from
the state, open the feature cache) -> :func:`train_one_epoch` -> :func:`commit_epoch`, repeated;
:func:`train` runs them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from .. import __version__
from ..errors import S2SWError, first_line
from ..fileio import atomic_write_bytes, check_output_dir
from ..model.checkpoint import PromptCheckpoint
from ..model.objective import s2sw_objective
from ..progress import progress as make_progress
from .config import TrainConfig, check_count, resolve_train_config
from .feature_cache import CACHE_DTYPES, MEMORY, collate_cached, encode_per_image, open_feature_cache
from .resume import (JSONL_NAME, LAST_NAME, LEGACY_STATE_NAME, prepare_out_dir, resumable_state,
                     run_fingerprint, write_exports)
from .state import STATE_NAME, TrainState, encode_state, indexed_optimizer_state, named_optimizer_state

logger = logging.getLogger(__name__)

__all__ = ["JSONL_NAME", "LAST_NAME", "LEGACY_STATE_NAME", "LOG_NAME", "LOSS_KEYS", "RunSetup", "TrainResult",
           "TrainRun", "commit_epoch", "resolve_train_config", "start_run", "train", "train_one_epoch"]

LOSS_KEYS = ("total", "pixel_generic", "pixel_contrastive", "image_ce", "pairwise")
LOG_NAME = "train.log"
_SHOWN = ("total", "pixel_generic", "pixel_contrastive", "image_ce")  # on the progress bar


@dataclass
class TrainResult:
    checkpoint: Path
    history: list[dict[str, float]]
    config: TrainConfig


@dataclass(frozen=True)
class RunSetup:
    """What a run trains on and with, besides its :class:`TrainConfig` (see :func:`train`)."""

    data_root: str | Path
    backbone: str = "ViT-L-14-336"
    weights: str | None = "openai"
    preset: str | None = "visa-to-all"
    device: str = "cpu"
    precision: str = "fp32"
    split: str = "test"
    classes: Sequence[str] | None = None
    progress: bool = True
    max_batches: int | None = None
    num_workers: int = 0
    detector_options: dict[str, Any] | None = None
    init_prompts: str | Path | None = None
    cache_features: str | Path | None = None
    cache_dtype: str = "fp32"

    def check(self) -> None:
        """Refuse a mistaken option before any work (an :class:`S2SWError` names the field)."""
        check_count(self.max_batches, "max_batches", optional=True)
        check_count(self.num_workers, "num_workers")
        if self.cache_dtype not in CACHE_DTYPES:
            raise S2SWError(f"invalid cache_dtype {self.cache_dtype!r}: choose one of {', '.join(CACHE_DTYPES)}",
                            fields=["cache_dtype"])
        if self.cache_features is None and self.cache_dtype != "fp32":
            raise S2SWError(f"cache_dtype {self.cache_dtype} applies to a feature cache; set cache_features "
                            f"to a folder or 'memory'", fields=["cache_dtype", "cache_features"])
        if self.cache_features is not None and str(self.cache_features) != MEMORY:
            check_output_dir(self.cache_features, "cache_features")


class RunLog:
    """A run's messages: to this module's logger and appended, time-stamped, to ``train.log``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __call__(self, msg: str) -> None:
        logger.info(msg)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {msg}\n")


@dataclass
class TrainRun:
    """A started run: what :func:`train_one_epoch` and :func:`commit_epoch` work on."""

    setup: RunSetup
    cfg: TrainConfig
    out_dir: Path
    log: RunLog
    det: Any  # the S2SWCLIP detector, prompts trainable
    optimizer: torch.optim.Optimizer
    names: list[str]  # the prompt parameters' names, in the optimizer's order
    shuffle_gen: torch.Generator
    pair_gen: torch.Generator
    fingerprint: dict[str, Any]
    loader: Any = None
    cache: Any = None  # the feature cache's training view, or None
    history: list[dict[str, float]] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)
    start_epoch: int = 0


@dataclass
class EpochStats:
    """One epoch's mean loss terms and where its image features came from."""

    means: dict[str, float]
    seconds: float
    features_cached: bool


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
    cache_features: str | Path | None = None,
    cache_dtype: str = "fp32",
    **overrides: Any,
) -> TrainResult:
    """Learn the prompts on ``data_root`` (a ``meta.json`` dataset) and checkpoint to ``out_dir``.

    Args:
        data_root: dataset root holding ``meta.json``; its ``split`` (default ``test``, as in
            the paper: the auxiliary set's annotated test split) is used for training.
        out_dir: where checkpoints and logs go (checked to be a writable folder before any work).
        backbone, weights, device, precision: as in :func:`s2swclip.load_detector` (precision
            applies to the frozen image encoder; the text encoder trains in float32).
        preset: ``visa-to-all`` or ``mvtec-to-visa`` (defaults for the values below).
        resume: continue from ``out_dir/train_state.safetensors`` if present. A state of another
            run configuration (backbone, weights, data, options other than ``epochs``) is refused.
        init_prompts: start from this prompt checkpoint (either format) instead of N(0, 0.02);
            not used when resuming (the state holds the prompts).
        max_batches: stop each epoch after this many batches (quick runs, tests).
        num_workers: data-loader worker processes.
        cache_features: a folder, or ``"memory"``: compute the frozen image features once per
            image and reuse them in later epochs (:mod:`s2swclip.training.feature_cache`). The expected
            size is logged first; a disk (memory) without the space is refused.
        cache_dtype: ``fp32`` (results bit-identical to an uncached run) or ``fp16`` (half the
            space; features rounded to float16 in every epoch, so the prompts differ slightly and
            the run's fingerprint records it).
        **overrides: TrainConfig fields: epochs, batch_size, image_size, lr, betas, seed,
            alpha, beta, random_pair_prob, pairwise_hinge.

    Returns:
        :class:`TrainResult` with the last checkpoint path and per-epoch mean losses.

    The global torch RNG is neither used nor reseeded: shuffling and pair choices draw from the
    run's own generators (seeded ``seed`` and ``seed + 1``), the prompts' initialisation from the
    builder's.
    """
    setup = RunSetup(data_root, backbone, weights, preset, device, precision, split, classes, progress,
                     max_batches, num_workers, detector_options, init_prompts, cache_features, cache_dtype)
    cfg = resolve_train_config(preset, **overrides)
    setup.check()
    run = start_run(setup, cfg, check_output_dir(out_dir), resume)
    try:
        for epoch in range(run.start_epoch, cfg.epochs):
            stats = train_one_epoch(run, epoch)
            commit_epoch(run, epoch, stats)
    finally:
        if run.cache is not None:
            run.cache.close()
    run.det.eval()
    return TrainResult(run.out_dir / LAST_NAME, run.history, cfg)


def start_run(setup: RunSetup, cfg: TrainConfig, out_dir: Path, resume: bool) -> TrainRun:
    """Load the data and the detector, build the optimizer and the run's generators, continue
    from ``out_dir``'s state with ``resume`` (refused when it belongs to another configuration),
    and open the feature cache. Nothing is written before the options and the state are checked."""
    from ..data.dataset import AnomalyDataset

    dataset = AnomalyDataset(setup.data_root, split=setup.split, image_size=cfg.image_size,
                             classes=setup.classes)
    if len(dataset) == 0:
        raise S2SWError(f"no '{setup.split}' items in {Path(setup.data_root) / 'meta.json'}: nothing to train on")
    fingerprint = run_fingerprint(
        cfg, backbone=setup.backbone, weights=setup.weights, precision=setup.precision, split=setup.split,
        classes=dataset.classes, items=len(dataset), max_batches=setup.max_batches,
        detector_options=setup.detector_options,
        cache_dtype=None if setup.cache_features is None else setup.cache_dtype)
    state = resumable_state(out_dir, fingerprint) if resume else None
    prepare_out_dir(out_dir)
    log = RunLog(out_dir / LOG_NAME)
    if state is None and resume:
        log(f"no {STATE_NAME} in {out_dir}: starting from scratch")
    det = _build_detector(setup, cfg, out_dir, state, log)
    det.train()
    names = [name for name, _ in det.prompts.named_parameters()]
    optimizer = torch.optim.Adam([p for _, p in det.prompts.named_parameters()], lr=cfg.lr,
                                 betas=cfg.betas)
    run = TrainRun(setup, cfg, out_dir, log, det, optimizer, names,
                   torch.Generator().manual_seed(cfg.seed), torch.Generator().manual_seed(cfg.seed + 1),
                   fingerprint)
    if state is not None:
        _continue_from(run, state)
    if setup.cache_features is not None:
        run.cache, summary = open_feature_cache(setup.cache_features, setup.cache_dtype, det, dataset)
        log(summary)
    run.loader = torch.utils.data.DataLoader(
        dataset if run.cache is None else run.cache.dataset(dataset), batch_size=cfg.batch_size,
        shuffle=True, generator=run.shuffle_gen, num_workers=setup.num_workers,
        collate_fn=None if run.cache is None else collate_cached)
    log(f"training on {len(dataset)} images of {len(dataset.classes)} classes from {setup.data_root}; "
        f"{json.dumps(dataclasses.asdict(cfg))}")
    if run.start_epoch >= cfg.epochs:
        log(f"already trained for {run.start_epoch} epochs")
    return run


def train_one_epoch(run: TrainRun, epoch: int) -> EpochStats:
    """One pass over the data (at most ``max_batches`` batches): the objective of each batch,
    one Adam step; returns the mean loss terms. Changes the prompts, the optimizer and the run's
    generators; writes nothing but the feature cache's new entries."""
    started = time.perf_counter()
    det, cache, setup = run.det, run.cache, run.setup
    det.train()
    sums = {k: 0.0 for k in LOSS_KEYS}
    n = images_seen = images_cached = 0
    limit = setup.max_batches
    total_batches = len(run.loader) if limit is None else min(len(run.loader), limit)
    bar = make_progress(total_batches, f"epoch {epoch + 1}/{run.cfg.epochs}", enabled=setup.progress,
                        unit="batch")
    if cache is not None:
        cache.begin_epoch()
    for i, batch in enumerate(run.loader):
        if limit is not None and i >= limit:
            break
        if cache is None:
            features, hits = encode_per_image(det, batch["image"]), 0
        else:
            features, hits = cache.features(det, batch)
        images_seen += len(batch["label"])
        images_cached += hits
        losses = _step(run, batch, features)
        for k in LOSS_KEYS:
            sums[k] += float(losses[k].detach())
        n += 1
        bar.set_postfix({k: f"{sums[k] / n:.4f}" for k in _SHOWN})
        bar.update(1)
    bar.close()
    if cache is not None:
        cache.flush()  # the next epoch's workers see every entry of this one
    return EpochStats({k: sums[k] / max(n, 1) for k in LOSS_KEYS}, time.perf_counter() - started,
                      images_seen > 0 and images_cached == images_seen)


def commit_epoch(run: TrainRun, epoch: int, stats: EpochStats) -> TrainState:
    """The epoch's one commit: the whole state, written atomically to ``train_state.safetensors``;
    then the files derived from it (prompts files, ``train_log.jsonl``)."""
    det, cfg = run.det, run.cfg
    run.history.append({"epoch": epoch + 1, **stats.means})
    run.records.append({"epoch": epoch + 1, "seconds": round(stats.seconds, 3),
                        **{k: v if math.isfinite(v) else None for k, v in stats.means.items()},
                        "lr": run.optimizer.param_groups[0]["lr"], "features_cached": stats.features_cached})
    meta = {"backbone": det.provenance.get("backbone"), "weights": det.provenance.get("weights"),
            "epoch": epoch + 1, "preset": run.setup.preset, "train_config": dataclasses.asdict(cfg),
            "data_root": str(run.setup.data_root), "s2swclip_version": __version__,
            "detector_config": det.config.to_dict()}
    state = TrainState(
        epoch + 1, {k: v.detach().float() for k, v in det.prompts.parameter_tensors().items()},
        dict(det.prompts.named_buffers()), det.prompts.config(),
        named_optimizer_state(run.optimizer, run.names),
        {"shuffle": run.shuffle_gen.get_state(), "pair": run.pair_gen.get_state()},
        run.history, run.records, run.fingerprint, meta)
    atomic_write_bytes(run.out_dir / STATE_NAME, encode_state(state))  # the epoch's one commit
    write_exports(run.out_dir, det.prompts, state)
    run.log(f"epoch {epoch + 1}/{cfg.epochs} " + " ".join(f"{k}={v:.5f}" for k, v in stats.means.items()))
    return state


def _step(run: TrainRun, batch: dict[str, Any], features: Any) -> dict[str, torch.Tensor]:
    """The objective on one batch and one optimizer step; returns the loss terms."""
    cfg = run.cfg
    losses = s2sw_objective(run.det, None, batch["mask"], batch["label"], features=features,
                            alpha=cfg.alpha, beta=cfg.beta, generator=run.pair_gen,
                            random_pair_prob=cfg.random_pair_prob, pairwise_hinge=cfg.pairwise_hinge)
    run.optimizer.zero_grad(set_to_none=True)
    losses["total"].backward()
    run.optimizer.step()
    return losses


def _build_detector(setup: RunSetup, cfg: TrainConfig, out_dir: Path, state: TrainState | None,
                    log: RunLog) -> Any:
    """The detector to train: its prompts from the state when resuming, else from
    ``init_prompts`` (or freshly initialised)."""
    from ..model.factory import load_detector

    state_path = out_dir / STATE_NAME
    prompts: str | Path | PromptCheckpoint | None = setup.init_prompts
    if state is not None:
        prompts = PromptCheckpoint("s2swclip", state.prompts, state.learner_config,
                                   {"detector_config": state.export_meta["detector_config"]},
                                   state.fixed_embeddings, path=str(state_path))
        if setup.init_prompts is not None:
            log(f"resuming: the prompts come from {state_path}, not from {setup.init_prompts}")
    try:
        return load_detector(setup.backbone, setup.weights, prompts, image_size=cfg.image_size,
                             device=setup.device, precision=setup.precision, seed=cfg.seed,
                             untrained_ok=True, **(setup.detector_options or {}))
    except (ValueError, TypeError) as e:
        if state is None:
            raise
        raise S2SWError(f"cannot resume from {state_path}: {first_line(e)}; delete it to start "
                        f"afresh or choose another out_dir", fields=["out_dir"]) from None


def _continue_from(run: TrainRun, state: TrainState) -> None:
    """Load ``state``'s optimizer, generators, history and records into ``run`` (its prompts are
    in the detector already) and re-derive the files a crash left missing or stale."""
    state_path = run.out_dir / STATE_NAME
    recorded, built = state.export_meta["detector_config"], run.det.config.to_dict()
    if built != recorded:
        diffs = [f"{k} was {v!r}, now {built[k]!r}" for k, v in recorded.items() if built[k] != v]
        raise S2SWError(f"cannot resume from {state_path}: it belongs to another run "
                        f"configuration (detector {'; '.join(diffs)}); resume with the same "
                        f"options or choose another out_dir", fields=["out_dir"])
    try:
        run.optimizer.load_state_dict(indexed_optimizer_state(state.optimizer, run.names))
        run.shuffle_gen.set_state(state.rng["shuffle"])
        run.pair_gen.set_state(state.rng["pair"])
    except (ValueError, KeyError, RuntimeError) as e:
        raise S2SWError(f"cannot resume from {state_path}: {first_line(e)}; delete it to start "
                        f"afresh or choose another out_dir", fields=["out_dir"]) from None
    run.history, run.records, run.start_epoch = list(state.history), list(state.records), state.epoch
    for written in write_exports(run.out_dir, run.det.prompts, state, only_if_stale=True):
        run.log(f"re-exported {written.name} from {STATE_NAME} (epoch {state.epoch})")
    run.log(f"resumed from epoch {run.start_epoch}")
