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
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import numbers
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from .. import __version__
from ..errors import S2SWError
from .feature_cache import CACHE_DTYPES, MEMORY, collate_cached, encode_per_image, open_feature_cache
from ..fileio import atomic_write_bytes, atomic_write_text, check_output_dir, remove_temporaries
from ..model.checkpoint import PromptCheckpoint, load_prompts, save_prompts
from ..model.config import TRAIN_FLAGS, TrainConfig, get_preset
from ..model.objective import s2sw_objective
from ..model.prompts import PromptLearner
from ..progress import progress as make_progress
from .state import (STATE_NAME, TrainState, encode_state, indexed_optimizer_state,
                          named_optimizer_state, one_line, read_state)

logger = logging.getLogger(__name__)

LOSS_KEYS = ("total", "pixel_generic", "pixel_contrastive", "image_ce", "pairwise")
LAST_NAME = "prompts_last.safetensors"
LOG_NAME = "train.log"
JSONL_NAME = "train_log.jsonl"
LEGACY_STATE_NAME = "train_state.pt"  # pickle, written before train_state.safetensors; never read
# the files an epoch commits; temporaries of these left by a crashed write are removed at start
_COMMITTED = re.compile(r"train_state\.safetensors|prompts_last\.safetensors|"
                        r"prompts_epoch\d+\.safetensors|train_log\.jsonl")
# what else a run's fingerprint records besides the TrainConfig fields, with the flag that sets it
_RUN_FLAGS = {"backbone": "--backbone", "weights": "--weights", "precision": "--precision",
              "split": "--split", "classes": "--classes", "items": "--data",
              "max_batches": "--max-batches", "detector_options": None, "feature_cache": "--cache-dtype"}


@dataclass
class TrainResult:
    checkpoint: Path
    history: list[dict[str, float]]
    config: TrainConfig


def resolve_train_config(preset: str | None = None, **overrides: Any) -> TrainConfig:
    """A preset's values (``visa-to-all`` by default), then explicit non-None overrides; every
    value is checked (an :class:`S2SWError` names the option and its flag)."""
    values = dict(get_preset(preset or "visa-to-all").train)
    values.update({k: v for k, v in overrides.items() if v is not None})
    unknown = set(values) - {f.name for f in dataclasses.fields(TrainConfig)}
    if unknown:
        raise S2SWError(f"unknown training option(s): {', '.join(sorted(unknown))}")
    return TrainConfig(**values)


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
    from ..model.factory import load_detector
    from ..data.dataset import AnomalyDataset

    cfg = resolve_train_config(preset, **overrides)
    _check_count(max_batches, "max_batches", "--max-batches", optional=True)
    _check_count(num_workers, "num_workers", "--workers")
    if cache_dtype not in CACHE_DTYPES:
        raise S2SWError(f"invalid --cache-dtype {cache_dtype!r}: choose one of {', '.join(CACHE_DTYPES)}")
    if cache_features is None and cache_dtype != "fp32":
        raise S2SWError(f"--cache-dtype {cache_dtype} applies to a feature cache: add --cache-features DIR|memory")
    if cache_features is not None and str(cache_features) != MEMORY:
        check_output_dir(cache_features, "--cache-features")
    out_dir = check_output_dir(out_dir)
    dataset = AnomalyDataset(data_root, split=split, image_size=cfg.image_size, classes=classes)
    if len(dataset) == 0:
        raise S2SWError(f"no '{split}' items in {Path(data_root) / 'meta.json'}: nothing to train on")
    fingerprint = json.loads(json.dumps({
        "backbone": str(backbone), "weights": _weights_id(weights), "precision": precision,
        "split": split, "classes": list(dataset.classes), "items": len(dataset),
        "max_batches": max_batches, "detector_options": dict(sorted((detector_options or {}).items())),
        "train": {k: v for k, v in dataclasses.asdict(cfg).items() if k != "epochs"}}, default=str))
    if cache_features is not None and cache_dtype != "fp32":
        fingerprint["feature_cache"] = cache_dtype  # rounded features change the results; fp32 does not
    state_path = out_dir / STATE_NAME
    state = _resumable_state(out_dir, fingerprint) if resume else None
    _prepare_out_dir(out_dir)
    log_path = out_dir / LOG_NAME

    def note(msg: str) -> None:
        logger.info(msg)
        with open(log_path, "a", encoding="utf-8") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {msg}\n")

    prompts: str | Path | PromptCheckpoint | None = init_prompts
    if state is not None:
        prompts = PromptCheckpoint("s2swclip", state.prompts, state.learner_config,
                                   {"detector_config": state.export_meta["detector_config"]},
                                   state.fixed_embeddings, path=str(state_path))
        if init_prompts is not None:
            note(f"resuming: the prompts come from {state_path}, not from {init_prompts}")
    elif resume:
        note(f"no {STATE_NAME} in {out_dir}: starting from scratch")
    try:
        det = load_detector(backbone, weights, prompts, image_size=cfg.image_size, device=device,
                            precision=precision, seed=cfg.seed, untrained_ok=True,
                            **(detector_options or {}))
    except (ValueError, TypeError) as e:
        if state is None:
            raise
        raise S2SWError(f"cannot resume from {state_path}: {one_line(e)}; delete it to start "
                        f"afresh or choose another --out") from None
    det.train()
    names = [name for name, _ in det.prompts.named_parameters()]
    optimizer = torch.optim.Adam([p for _, p in det.prompts.named_parameters()], lr=cfg.lr,
                                 betas=cfg.betas)
    shuffle_gen = torch.Generator().manual_seed(cfg.seed)
    pair_gen = torch.Generator().manual_seed(cfg.seed + 1)
    history: list[dict[str, float]] = []
    records: list[dict[str, Any]] = []
    start_epoch = 0
    if state is not None:
        recorded, built = state.export_meta["detector_config"], det.config.to_dict()
        if built != recorded:
            diffs = [f"{k} was {v!r}, now {built[k]!r}" for k, v in recorded.items() if built[k] != v]
            raise S2SWError(f"cannot resume from {state_path}: it belongs to another run "
                            f"configuration (detector {'; '.join(diffs)}); resume with the same "
                            f"options or choose another --out")
        try:
            optimizer.load_state_dict(indexed_optimizer_state(state.optimizer, names))
            shuffle_gen.set_state(state.rng["shuffle"])
            pair_gen.set_state(state.rng["pair"])
        except (ValueError, KeyError, RuntimeError) as e:
            raise S2SWError(f"cannot resume from {state_path}: {one_line(e)}; delete it to start "
                            f"afresh or choose another --out") from None
        history, records, start_epoch = list(state.history), list(state.records), state.epoch
        for written in _write_exports(out_dir, det.prompts, state, only_if_stale=True):
            note(f"re-exported {written.name} from {STATE_NAME} (epoch {state.epoch})")
        note(f"resumed from epoch {start_epoch}")

    # ---- image features: per image, from the feature cache when there is one (feature_cache.py)
    cache = None
    if cache_features is not None:
        cache, summary = open_feature_cache(cache_features, cache_dtype, det, dataset)
        note(summary)
    loader = torch.utils.data.DataLoader(dataset if cache is None else cache.dataset(dataset),
                                         batch_size=cfg.batch_size, shuffle=True, generator=shuffle_gen,
                                         num_workers=num_workers,
                                         collate_fn=None if cache is None else collate_cached)
    note(f"training on {len(dataset)} images of {len(dataset.classes)} classes from {data_root}; "
         f"{json.dumps(dataclasses.asdict(cfg))}")
    last = out_dir / LAST_NAME
    if start_epoch >= cfg.epochs:
        note(f"already trained for {start_epoch} epochs")
    try:
        for epoch in range(start_epoch, cfg.epochs):
            started = time.perf_counter()
            det.train()
            sums = {k: 0.0 for k in LOSS_KEYS}
            n = images_seen = images_cached = 0
            total_batches = len(loader) if max_batches is None else min(len(loader), max_batches)
            bar = make_progress(total_batches, f"epoch {epoch + 1}/{cfg.epochs}", enabled=progress, unit="batch")
            if cache is not None:
                cache.begin_epoch()
            for i, batch in enumerate(loader):
                if max_batches is not None and i >= max_batches:
                    break
                if cache is None:
                    features, hits = encode_per_image(det, batch["image"]), 0
                else:
                    features, hits = cache.features(det, batch)
                images_seen += len(batch["label"])
                images_cached += hits
                losses = s2sw_objective(det, None, batch["mask"], batch["label"], features=features,
                                        alpha=cfg.alpha, beta=cfg.beta, generator=pair_gen,
                                        random_pair_prob=cfg.random_pair_prob,
                                        pairwise_hinge=cfg.pairwise_hinge)
                optimizer.zero_grad(set_to_none=True)
                losses["total"].backward()
                optimizer.step()
                for k in LOSS_KEYS:
                    sums[k] += float(losses[k].detach())
                n += 1
                bar.set_postfix({k: f"{sums[k] / n:.4f}" for k in ("total", "pixel_generic", "pixel_contrastive", "image_ce")})
                bar.update(1)
            bar.close()
            if cache is not None:
                cache.flush()  # the next epoch's workers see every entry of this one
            means = {k: sums[k] / max(n, 1) for k in LOSS_KEYS}
            history.append({"epoch": epoch + 1, **means})
            records.append({"epoch": epoch + 1, "seconds": round(time.perf_counter() - started, 3),
                            **{k: v if math.isfinite(v) else None for k, v in means.items()},
                            "lr": optimizer.param_groups[0]["lr"],
                            "features_cached": images_seen > 0 and images_cached == images_seen})
            meta = {"backbone": det.provenance.get("backbone"), "weights": det.provenance.get("weights"),
                    "epoch": epoch + 1, "preset": preset, "train_config": dataclasses.asdict(cfg),
                    "data_root": str(data_root), "s2swclip_version": __version__,
                    "detector_config": det.config.to_dict()}
            state = TrainState(
                epoch + 1, {k: v.detach().float() for k, v in det.prompts.parameter_tensors().items()},
                dict(det.prompts.named_buffers()), det.prompts.config(),
                named_optimizer_state(optimizer, names),
                {"shuffle": shuffle_gen.get_state(), "pair": pair_gen.get_state()},
                history, records, fingerprint, meta)
            atomic_write_bytes(state_path, encode_state(state))  # the epoch's one commit
            _write_exports(out_dir, det.prompts, state)
            note(f"epoch {epoch + 1}/{cfg.epochs} " + " ".join(f"{k}={v:.5f}" for k, v in means.items()))
    finally:
        if cache is not None:
            cache.close()
    det.eval()
    return TrainResult(last, history, cfg)


def _check_count(value: Any, name: str, flag: str, optional: bool = False) -> None:
    if optional and value is None:
        return
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 0:
        raise S2SWError(f"{name} must be an integer >= 0, got {value!r} ({flag})")


def _prepare_out_dir(out_dir: Path) -> None:
    """Create ``out_dir``, prove it writable, and remove temporaries of a crashed run's commits."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out_dir):
            pass
        for leftover in remove_temporaries(out_dir, _COMMITTED):
            logger.info("removed %s, left by an interrupted write", leftover)
    except OSError as e:
        raise S2SWError(f"cannot write to --out {out_dir}: {one_line(e)}; choose another folder") from None


def _weights_id(weights: str | None) -> str | None:
    """``weights`` as the fingerprint records it: a file by its absolute path, else the tag."""
    if weights is None:
        return None
    path = Path(os.path.expanduser(str(weights)))
    return str(path.resolve()) if path.is_file() else str(weights)


def _resumable_state(out_dir: Path, fingerprint: dict[str, Any]) -> TrainState | None:
    """The state to resume from (None: none there), checked to belong to this configuration."""
    path = out_dir / STATE_NAME
    if not path.exists():
        legacy = out_dir / LEGACY_STATE_NAME
        if legacy.exists():
            raise S2SWError(f"cannot resume from {legacy}: it is in the pickle format of older s2swclip "
                            f"versions, which is not read (a pickle can run code); delete it to start "
                            f"afresh or choose another --out")
        return None
    state = read_state(path)
    diffs = _differences(state.fingerprint, fingerprint)
    if diffs:
        raise S2SWError(f"cannot resume from {path}: it belongs to another run configuration "
                        f"({'; '.join(diffs)}); resume with the same options or choose another --out")
    return state


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Human-readable ``name was X, now Y (--flag)`` for each fingerprint entry that differs."""
    flags = dict(_RUN_FLAGS, **TRAIN_FLAGS)
    old_items = {**{k: v for k, v in old.items() if k != "train"}, **_mapping_or_empty(old.get("train"))}
    new_items = {**{k: v for k, v in new.items() if k != "train"}, **new["train"]}
    out = []
    for key in sorted(set(old_items) | set(new_items)):
        if old_items.get(key) != new_items.get(key):
            flag = f" ({flags[key]})" if flags.get(key) else ""
            out.append(f"{key} was {old_items.get(key)!r}, now {new_items.get(key)!r}{flag}")
    return out


def _mapping_or_empty(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _write_exports(out_dir: Path, learner: PromptLearner, state: TrainState,
                   only_if_stale: bool = False) -> list[Path]:
    """Write the files derived from ``state`` (its epoch's prompts file, ``prompts_last`` and
    ``train_log.jsonl``); with ``only_if_stale`` only those missing or different. ``learner``
    holds ``state``'s prompts. Returns the paths written."""
    written = []
    for path in (out_dir / f"prompts_epoch{state.epoch:03d}.safetensors", out_dir / LAST_NAME):
        if not (only_if_stale and _holds(path, learner, state.export_meta)):
            save_prompts(path, learner, state.export_meta)
            written.append(path)
    path = out_dir / JSONL_NAME
    text = "".join(json.dumps(r) + "\n" for r in state.records)
    if not (only_if_stale and path.is_file() and path.read_bytes() == text.encode("utf-8")):
        atomic_write_text(path, text)
        written.append(path)
    return written


def _holds(path: Path, learner: PromptLearner, meta: dict[str, Any]) -> bool:
    """Whether ``path`` is a prompt file with exactly ``learner``'s prompts and ``meta``."""
    if not path.is_file():
        return False
    try:
        ckpt = load_prompts(path)
    except S2SWError:
        return False
    current = learner.parameter_tensors()
    return (ckpt.kind == "s2swclip" and ckpt.meta == meta and ckpt.config == learner.config()
            and set(ckpt.tensors) == set(current)
            and all(torch.equal(ckpt.tensors[k], v.detach().float().cpu()) for k, v in current.items()))
