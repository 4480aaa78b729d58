"""What makes a training run resumable: its fingerprint, the state it may resume from, and the
files derived from each committed state (re-derived on resume when a crash left them missing or
stale). Used by :mod:`s2swclip.training.loop`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Sequence

import torch

from ..errors import S2SWError, first_line
from ..fileio import atomic_write_text, remove_temporaries
from ..model.checkpoint import load_prompts, save_prompts
from ..model.prompts import PromptLearner
from .config import TrainConfig
from .state import STATE_NAME, TrainState, read_state

logger = logging.getLogger(__name__)

LAST_NAME = "prompts_last.safetensors"
JSONL_NAME = "train_log.jsonl"
LEGACY_STATE_NAME = "train_state.pt"  # pickle, written before train_state.safetensors; never read
# the files an epoch commits; temporaries of these left by a crashed write are removed at start
_COMMITTED = re.compile(r"train_state\.safetensors|prompts_last\.safetensors|"
                        r"prompts_epoch\d+\.safetensors|train_log\.jsonl")


def run_fingerprint(cfg: TrainConfig, *, backbone: str, weights: str | None, precision: str, split: str,
                    classes: Sequence[str], items: int, max_batches: int | None,
                    detector_options: dict[str, Any] | None, cache_dtype: str | None) -> dict[str, Any]:
    """What a resumed run must share with the run that wrote the state: every option that changes
    the numbers (all TrainConfig fields but ``epochs``; ``feature_cache`` only when features are
    rounded, ``cache_dtype`` not ``fp32``). JSON values, as the state stores them."""
    fingerprint = json.loads(json.dumps({
        "backbone": str(backbone), "weights": _weights_id(weights), "precision": precision,
        "split": split, "classes": list(classes), "items": items,
        "max_batches": max_batches, "detector_options": dict(sorted((detector_options or {}).items())),
        "train": {k: v for k, v in dataclasses.asdict(cfg).items() if k != "epochs"}}, default=str))
    if cache_dtype is not None and cache_dtype != "fp32":
        fingerprint["feature_cache"] = cache_dtype  # rounded features change the results; fp32 does not
    return fingerprint


def resumable_state(out_dir: Path, fingerprint: dict[str, Any]) -> TrainState | None:
    """The state to resume from (None: none there), checked to belong to this configuration."""
    path = out_dir / STATE_NAME
    if not path.exists():
        legacy = out_dir / LEGACY_STATE_NAME
        if legacy.exists():
            raise S2SWError(f"cannot resume from {legacy}: it is in the pickle format of older s2swclip "
                            f"versions, which is not read (a pickle can run code); delete it to start "
                            f"afresh or choose another out_dir", fields=["out_dir"])
        return None
    state = read_state(path)
    diffs = differences(state.fingerprint, fingerprint)
    if diffs:
        raise S2SWError(f"cannot resume from {path}: it belongs to another run configuration "
                        f"({'; '.join(text for _, text in diffs)}); resume with the same options or "
                        f"choose another out_dir", fields=[*(key for key, _ in diffs), "out_dir"])
    return state


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, str]]:
    """``(name, "name was X, now Y")`` for each fingerprint entry that differs (the TrainConfig
    fields by their own names)."""
    old_items = {**{k: v for k, v in old.items() if k != "train"}, **_mapping_or_empty(old.get("train"))}
    new_items = {**{k: v for k, v in new.items() if k != "train"}, **new["train"]}
    return [(key, f"{key} was {old_items.get(key)!r}, now {new_items.get(key)!r}")
            for key in sorted(set(old_items) | set(new_items)) if old_items.get(key) != new_items.get(key)]


def prepare_out_dir(out_dir: Path) -> None:
    """Create ``out_dir``, prove it writable, and remove temporaries of a crashed run's commits."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out_dir):
            pass
        for leftover in remove_temporaries(out_dir, _COMMITTED):
            logger.info("removed %s, left by an interrupted write", leftover)
    except OSError as e:
        raise S2SWError(f"cannot write to out_dir {out_dir}: {first_line(e)}; choose another folder",
                        fields=["out_dir"]) from None


def write_exports(out_dir: Path, learner: PromptLearner, state: TrainState,
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


def _weights_id(weights: str | None) -> str | None:
    """``weights`` as the fingerprint records it: a file by its absolute path, else the tag."""
    if weights is None:
        return None
    path = Path(os.path.expanduser(str(weights)))
    return str(path.resolve()) if path.is_file() else str(weights)


def _mapping_or_empty(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


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
