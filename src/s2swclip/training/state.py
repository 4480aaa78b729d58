"""The training state file, ``train_state.safetensors``: one atomic commit per epoch.

It holds everything ``train(..., resume=True)`` needs to continue exactly as an uninterrupted run:

* tensors ``prompts.<name>`` (the learner's parameters, e.g. ``ctx_normal`` [n_ctx, W]),
  ``buffers.<family>_{prefix,suffix,eot}`` (its fixed word embeddings [2, 1, W], [2, L-1-n_ctx, W]
  and EOT positions [2]), ``optimizer.<name>.<key>`` (Adam's ``step`` [] and moments
  ``exp_avg``/``exp_avg_sq`` shaped like the parameter), ``rng.<role>`` (uint8 generator states);
* JSON metadata: format tag and version, ``epoch``, the loss ``history``, the ``records`` of
  ``train_log.jsonl``, the optimizer's parameter groups, the learner config, the metadata of the
  exported prompt files (``export_meta``) and the run's configuration ``fingerprint``.

Safetensors is tensors plus a JSON header: reading it unpickles nothing, so a hostile file put in
its place cannot run code. :func:`read_state` checks every field before anything is built from it
and turns any defect into one :class:`~s2swclip.errors.S2SWError` line.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import S2SWError, first_line
from ..model.config import DetectorConfig
from ..model.prompts import FAMILIES

STATE_NAME = "train_state.safetensors"
FORMAT_TAG = "s2swclip-train-state"
FORMAT_VERSION = 1
MAX_BYTES = 1 << 28  # a state is a few MB even for ViT-L; refuse to read anything far larger
RNG_ROLES = ("shuffle", "pair")
BUFFER_NAMES = tuple(f"{f}_{part}" for f in FAMILIES for part in ("prefix", "suffix", "eot"))


@dataclass
class TrainState:
    """One epoch's checkpoint (see the module docstring for the file layout)."""

    epoch: int
    prompts: dict[str, torch.Tensor]
    buffers: dict[str, torch.Tensor]
    learner_config: dict[str, Any]
    optimizer: dict[str, Any]  # torch state_dict, parameters named instead of numbered
    rng: dict[str, torch.Tensor]
    history: list[dict[str, float]]
    records: list[dict[str, Any]]
    fingerprint: dict[str, Any]
    export_meta: dict[str, Any]

    @property
    def fixed_embeddings(self) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """``{family: (prefix, suffix, eot)}`` as :class:`PromptCheckpoint` ``fixed`` takes it."""
        return {f: tuple(self.buffers[f"{f}_{part}"] for part in ("prefix", "suffix", "eot")) for f in FAMILIES}


def named_optimizer_state(optimizer: torch.optim.Optimizer, names: list[str]) -> dict[str, Any]:
    """``optimizer.state_dict()`` with parameter ``names`` (in the optimizer's order) for indices."""
    sd = optimizer.state_dict()
    groups = [dict(g, params=[names[i] for i in g["params"]]) for g in sd["param_groups"]]
    return {"param_groups": groups, "state": {names[i]: dict(s) for i, s in sd["state"].items()}}


def indexed_optimizer_state(named: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """The inverse of :func:`named_optimizer_state`, for ``optimizer.load_state_dict``."""
    index = {n: i for i, n in enumerate(names)}
    groups = []
    for g in named["param_groups"]:
        g = dict(g, params=[index[n] for n in g["params"]])
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    return {"param_groups": groups, "state": {index[n]: dict(s) for n, s in named["state"].items()}}


def encode_state(state: TrainState) -> bytes:
    """The safetensors bytes of ``state``."""
    from safetensors.torch import save

    tensors = {f"prompts.{k}": v for k, v in state.prompts.items()}
    tensors.update({f"buffers.{k}": v for k, v in state.buffers.items()})
    tensors.update({f"rng.{k}": v for k, v in state.rng.items()})
    state_keys = {}
    for name, entry in state.optimizer["state"].items():
        state_keys[name] = sorted(entry)
        tensors.update({f"optimizer.{name}.{k}": v for k, v in entry.items()})
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    metadata = {
        "format": FORMAT_TAG, "format_version": str(FORMAT_VERSION), "epoch": str(state.epoch),
        "history": json.dumps(state.history), "records": json.dumps(state.records),
        "optimizer": json.dumps({"param_groups": state.optimizer["param_groups"], "state_keys": state_keys}),
        "learner_config": json.dumps(state.learner_config), "fingerprint": json.dumps(state.fingerprint),
        "export_meta": json.dumps(state.export_meta)}
    return save(tensors, metadata=metadata)


def read_state(path: str | os.PathLike) -> TrainState:
    """Read and fully check a state file; any defect is an S2SWError naming ``path``."""
    path = Path(path)
    try:
        return _read(path)
    except S2SWError:
        raise
    except Exception as e:  # safetensors, JSON and our own checks: all mean "not a usable state"
        raise S2SWError(f"cannot resume from {path}: {first_line(e)}; delete it to start afresh "
                        f"or choose another out_dir", fields=["out_dir"]) from None


def _read(path: Path) -> TrainState:
    from safetensors import safe_open

    size = path.stat().st_size
    if size > MAX_BYTES:
        raise ValueError(f"{size} bytes is far more than a training state holds")
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9 or head[8:9] != b"{":
        raise ValueError("not a safetensors file (training states are written as "
                         "train_state.safetensors by this version of s2swclip)")
    with safe_open(str(path), framework="pt", device="cpu") as f:
        meta = f.metadata() or {}
        if meta.get("format") != FORMAT_TAG:
            raise ValueError("not an s2swclip training state")
        if meta.get("format_version") != str(FORMAT_VERSION):
            raise ValueError(f"training-state format version {meta.get('format_version')!r} is not "
                             f"the supported {FORMAT_VERSION}")
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    for key in ("epoch", "history", "records", "optimizer", "learner_config", "fingerprint", "export_meta"):
        if key not in meta:
            raise ValueError(f"metadata lacks {key!r}")
    if not meta["epoch"].isdigit() or int(meta["epoch"]) < 1:
        raise ValueError(f"epoch {meta['epoch']!r} is not a positive integer")
    epoch = int(meta["epoch"])
    groups = _by_prefix(tensors)
    prompts = _check_prompts(groups.pop("prompts", {}))
    buffers = groups.pop("buffers", {})
    if set(buffers) != set(BUFFER_NAMES):
        raise ValueError(f"buffers must be exactly {', '.join(BUFFER_NAMES)}")
    rng = groups.pop("rng", {})
    if set(rng) != set(RNG_ROLES):
        raise ValueError(f"random generator states must be exactly {', '.join(RNG_ROLES)}")
    for role, value in rng.items():
        if value.dtype != torch.uint8 or value.dim() != 1:
            raise ValueError(f"rng.{role} is not a generator state")
        torch.Generator().set_state(value)  # rejects a state of the wrong size
    optimizer = _check_optimizer(_json(meta, "optimizer"), groups.pop("optimizer", {}), prompts)
    if groups:
        raise ValueError(f"unexpected tensors {', '.join(sorted(groups))}.*")
    history = _check_epochs(_json(meta, "history"), epoch, "history")
    records = _check_epochs(_json(meta, "records"), epoch, "records")
    learner_config = _check_learner_config(_json(meta, "learner_config"), prompts)
    fingerprint = _mapping(_json(meta, "fingerprint"), "fingerprint")
    export_meta = _mapping(_json(meta, "export_meta"), "export_meta")
    _check_detector_config(export_meta.get("detector_config"))
    return TrainState(epoch, prompts, buffers, learner_config, optimizer, rng, history, records,
                      fingerprint, export_meta)


def _json(meta: dict[str, str], key: str) -> Any:
    try:
        return json.loads(meta[key])
    except ValueError as e:
        raise ValueError(f"metadata {key!r} is not valid JSON ({e})") from None


def _by_prefix(tensors: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        prefix, _, rest = key.partition(".")
        if not rest:
            raise ValueError(f"unexpected tensor {key!r}")
        groups.setdefault(prefix, {})[rest] = value
    return groups


def _check_prompts(prompts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    expected = {"ctx_normal", "ctx_anomaly", "deep_prompts"}
    if set(prompts) != expected:
        raise ValueError(f"prompt tensors must be exactly {', '.join(sorted(expected))}")
    for name, value in prompts.items():
        if value.dtype != torch.float32:
            raise ValueError(f"prompts.{name} must be float32, not {value.dtype}")
    if prompts["ctx_normal"].dim() != 2 or prompts["ctx_anomaly"].shape != prompts["ctx_normal"].shape:
        raise ValueError("prompts.ctx_normal/ctx_anomaly must both be [n_ctx, W]")
    return prompts


def _check_optimizer(spec: Any, tensors: dict[str, torch.Tensor], prompts: dict[str, torch.Tensor]) -> dict[str, Any]:
    spec = _mapping(spec, "optimizer")
    groups, state_keys = spec.get("param_groups"), _mapping(spec.get("state_keys"), "optimizer state_keys")
    if not isinstance(groups, list) or not all(isinstance(g, dict) and isinstance(g.get("params"), list)
                                               for g in groups):
        raise ValueError("optimizer param_groups must be a list of groups with params")
    named = [n for g in groups for n in g["params"]]
    if sorted(named) != sorted(prompts):
        raise ValueError("optimizer param_groups must name each prompt tensor once")
    for g in groups:
        for key, value in g.items():
            if key != "params" and not _json_scalar(value):
                raise ValueError(f"optimizer hyper-parameter {key!r} is not a number/flag")
    if set(state_keys) - set(prompts):
        raise ValueError("optimizer state names unknown parameters")
    state: dict[str, dict[str, torch.Tensor]] = {}
    for name, keys in state_keys.items():
        if not isinstance(keys, list):
            raise ValueError(f"optimizer state_keys of {name} must be a list")
        entry = {}
        for key in keys:
            value = tensors.pop(f"{name}.{key}", None)
            if value is None:
                raise ValueError(f"optimizer state lacks {name}.{key}")
            expected = () if key == "step" else tuple(prompts[name].shape)
            if tuple(value.shape) != expected or not value.is_floating_point():
                raise ValueError(f"optimizer.{name}.{key} has shape {tuple(value.shape)}, expected {expected}")
            entry[key] = value
        state[name] = entry
    if tensors:
        raise ValueError(f"unexpected optimizer tensors {', '.join(sorted(tensors))}")
    return {"param_groups": groups, "state": state}


def _json_scalar(value: Any) -> bool:
    if isinstance(value, list):
        return all(_json_scalar(v) for v in value)
    return value is None or isinstance(value, (bool, int, float))


def _check_epochs(entries: Any, epoch: int, what: str) -> list[dict[str, Any]]:
    if not isinstance(entries, list) or len(entries) != epoch:
        raise ValueError(f"{what} must list {epoch} epochs")
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or entry.get("epoch") != i + 1:
            raise ValueError(f"{what} entry {i} is not epoch {i + 1}")
        for key, value in entry.items():
            if not (value is None or isinstance(value, (bool, int, float))):
                raise ValueError(f"{what} entry {i}: {key} is not a number")
    return entries


def _check_learner_config(config: Any, prompts: dict[str, torch.Tensor]) -> dict[str, Any]:
    config = _mapping(config, "learner_config")
    n_ctx, depth, tokens = (config.get(k) for k in ("n_ctx", "depth", "deep_tokens"))
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (n_ctx, depth, tokens)):
        raise ValueError("learner_config n_ctx/depth/deep_tokens must be integers")
    width = prompts["ctx_normal"].shape[1]
    if prompts["ctx_normal"].shape[0] != n_ctx or tuple(prompts["deep_prompts"].shape) != (depth - 1, tokens, width):
        raise ValueError("learner_config does not match the prompt tensors' shapes")
    vocabulary = _mapping(config.get("vocabulary"), "learner_config vocabulary")
    if set(vocabulary) != set(FAMILIES) or not all(
            isinstance(v, list) and len(v) == 2 and all(isinstance(w, str) for w in v) for v in vocabulary.values()):
        raise ValueError(f"learner_config vocabulary must give two phrases for each of {', '.join(FAMILIES)}")
    return config


def _check_detector_config(config: Any) -> None:
    """Same fields and value types as :class:`DetectorConfig` (it is passed on to the builder)."""
    config = _mapping(config, "export_meta detector_config")
    reference = DetectorConfig().to_dict()
    if set(config) != set(reference):
        raise ValueError("export_meta detector_config does not list the detector options")
    for key, default in reference.items():
        value = config[key]
        if isinstance(default, list):
            ok = isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        elif isinstance(default, float):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        else:
            ok = type(value) is type(default)
        if not ok:
            raise ValueError(f"export_meta detector_config {key}={value!r} is invalid")


def _mapping(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{what} is not a mapping")
    return value
