"""Prompt checkpoints: this package's format and the authors' released format.

* Ours: a ``.safetensors`` file with tensors ``ctx_normal`` [n_ctx, W], ``ctx_anomaly``
  [n_ctx, W], ``deep_prompts`` [depth-1, t, W] and JSON metadata (format tag, prompt learner
  config incl. vocabularies, backbone, training info). Safe to load, loads anywhere.
* The authors': a ``.pth`` holding ``{"prompt_learner": state_dict}`` of their
  AnomalyCLIP_PromptLearner (``ctx_pos``/``ctx_neg`` [1, 1, n_ctx, W],
  ``compound_prompts_text.k`` [t, W], fixed ``token_prefix*``/``token_suffix*``/
  ``tokenized_prompts*`` buffers, unused ``compound_prompt_projections.*``). Read with
  ``torch.load(weights_only=True)``; a TorchScript archive is refused without being opened as
  one. Its fixed buffers are used as the released code would (its ``load_state_dict``
  overwrites the rebuilt ones).

Loading validates everything before anything is built from it (tensor types, dtypes, shapes and
finiteness, deep-prompt numbering, the configuration, the vocabulary and the recorded detector
options); each problem is one :class:`S2SWError` line naming the file.

Writes are atomic: a temporary file in the target folder, then ``os.replace``.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import S2SWError, first_line
from ..fileio import atomic_write_bytes
from .prompts import AUTHORS_SUFFIX, FAMILIES, PromptLearner
from .torchfiles import UnreadableFile, is_torchscript_archive, torch_load_tensors

FORMAT_TAG = "s2swclip-prompts"
FORMAT_VERSION = 1


@dataclass
class PromptCheckpoint:
    """What a prompt checkpoint holds, independent of its file format."""

    kind: str  # "s2swclip" or "authors"
    tensors: dict[str, torch.Tensor]  # ctx_normal, ctx_anomaly, deep_prompts
    config: dict[str, Any]  # n_ctx, depth, deep_tokens (+ vocabulary for ours)
    meta: dict[str, Any] = field(default_factory=dict)
    fixed: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    path: str = ""

    def apply(self, learner: PromptLearner) -> None:
        """Load these prompts into ``learner`` (shapes must match)."""
        try:
            learner.load_parameter_tensors(self.tensors, source=self.path or "checkpoint")
            for family, (prefix, suffix, eot) in self.fixed.items():
                learner.load_fixed_embeddings(family, prefix, suffix, eot)
        except (KeyError, ValueError) as e:
            raise S2SWError(f"prompt checkpoint {self.path} does not fit this backbone: {first_line(e)}; "
                            f"was it trained with another backbone?", fields=["backbone"]) from None


def save_prompts(path: str | os.PathLike, learner: PromptLearner, meta: dict[str, Any] | None = None) -> None:
    """Save ``learner``'s parameters in this package's safetensors format, atomically."""
    from safetensors.torch import save

    tensors = {k: v.detach().float().cpu().contiguous() for k, v in learner.parameter_tensors().items()}
    metadata = {"format": FORMAT_TAG, "format_version": str(FORMAT_VERSION),
                "config": json.dumps(learner.config()), "meta": json.dumps(meta or {})}
    atomic_write_bytes(path, save(tensors, metadata=metadata))


def load_prompts(path: str | os.PathLike) -> PromptCheckpoint:
    """Read and fully validate a prompt checkpoint of either format (detected from the content).

    Every problem (unreadable file, wrong kind of file, malformed tensors, configuration or
    metadata) raises :class:`S2SWError` naming the file, before anything is built from it.
    """
    path = Path(os.path.expanduser(str(path)))
    if not path.is_file():
        raise S2SWError(f"prompt checkpoint not found: {path} (pass a file written by "
                        f"'s2swclip train' or the authors' epoch_N.pth)")
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) == 9 and head[8:9] == b"{":  # safetensors: u64 header length, then JSON
        return _load_ours(path)
    return _load_authors(path)


def _quote(value: Any, limit: int = 60) -> str:
    """A value from the file, quoted on one line and cut to ``limit`` characters."""
    s = repr(value)
    return s if len(s) <= limit else s[: limit - 3] + "..."


def _invalid(path: Path, problem: str) -> S2SWError:
    return S2SWError(f"prompt checkpoint {path} is invalid: {problem}")


def _prompt_tensor(path: Path, name: str, value: Any, dims: int | None = None) -> torch.Tensor:
    """``value`` checked to be a dense, finite floating-point tensor (of ``dims`` dimensions)."""
    if not isinstance(value, torch.Tensor):
        raise _invalid(path, f"{name} is not a tensor (it is a {type(value).__name__})")
    if value.layout != torch.strided:
        raise _invalid(path, f"{name} is not a dense tensor")
    if not value.is_floating_point():
        raise _invalid(path, f"{name} has dtype {value.dtype}, not a floating-point type")
    if dims is not None and value.dim() != dims:
        raise _invalid(path, f"{name} has {value.dim()} dimensions {tuple(value.shape)}, expected {dims}")
    if not bool(torch.isfinite(value).all()):
        raise _invalid(path, f"{name} holds NaN or infinite values")
    return value


def _check_prompts(path: Path, ctx_normal: torch.Tensor, ctx_anomaly: torch.Tensor,
                   deep: torch.Tensor, names: tuple[str, str, str]) -> None:
    """Shapes: ctx [n_ctx, W] twice, deep [depth-1, t, W] with n_ctx >= 1, t <= n_ctx."""
    n_ctx, width = ctx_normal.shape
    if ctx_anomaly.shape != ctx_normal.shape:
        raise _invalid(path, f"{names[0]} {tuple(ctx_normal.shape)} and {names[1]} "
                             f"{tuple(ctx_anomaly.shape)} differ in shape")
    if n_ctx < 1 or width < 1:
        raise _invalid(path, f"{names[0]} has shape {tuple(ctx_normal.shape)}: n_ctx and the "
                             f"width must be at least 1")
    if deep.shape[0] > 0 and (deep.shape[2] != width or deep.shape[1] > n_ctx):
        raise _invalid(path, f"{names[2]} have shape {tuple(deep.shape[1:])}, expected [t, {width}] "
                             f"with t <= n_ctx = {n_ctx}")


def _int_option(path: Path, where: str, name: str, value: Any, minimum: int) -> int:
    if type(value) is not int or value < minimum:
        raise _invalid(path, f"{where} {name} must be an integer >= {minimum}, got {_quote(value)}")
    return value


def _bool_option(path: Path, name: str, value: Any) -> None:
    if type(value) is not bool:
        raise _invalid(path, f"recorded option {name} must be true or false, got {_quote(value)}")


def _feature_layers_option(path: Path, name: str, value: Any) -> None:
    if (not isinstance(value, list) or not value
            or not all(type(x) is int and x >= 1 for x in value)):
        raise _invalid(path, f"recorded option {name} must be a non-empty list of layer numbers "
                             f">= 1, got {_quote(value)}")


# the detector options a checkpoint records and load_detector inherits (api.STRUCTURAL_OPTIONS)
RECORDED_OPTION_CHECKS = {
    "feature_layers": _feature_layers_option,
    "dpam_layers": lambda path, name, value: _int_option(path, "recorded option", name, value, 0),
    "layer_aliasing": _bool_option,
    "round_deep_prompts": _bool_option,
    "global_ln_post": _bool_option,
}


def _json_mapping(path: Path, metadata: dict[str, str], key: str, required: bool) -> dict[str, Any]:
    if key not in metadata:
        if required:
            raise _invalid(path, f"its metadata lacks '{key}'")
        return {}
    try:
        value = json.loads(metadata[key])
    except (ValueError, RecursionError):
        raise _invalid(path, f"its '{key}' metadata is not valid JSON") from None
    if not isinstance(value, dict):
        raise _invalid(path, f"its '{key}' metadata is not a JSON object (got {type(value).__name__})")
    return value


def _check_vocabulary(path: Path, vocabulary: Any) -> None:
    ok = isinstance(vocabulary, dict) and set(vocabulary) == set(FAMILIES) and all(
        isinstance(v, list) and len(v) == 2 and all(isinstance(w, str) and w.strip() for w in v)
        for v in vocabulary.values())
    if not ok:
        raise _invalid(path, f"its vocabulary must map each of {', '.join(FAMILIES)} to "
                             f"[normal words, anomaly words], got {_quote(vocabulary)}")


def _check_meta(path: Path, meta: dict[str, Any]) -> None:
    if "backbone" in meta and not isinstance(meta["backbone"], str):
        raise _invalid(path, f"its recorded backbone is not a name: {_quote(meta['backbone'])}")
    if "detector_config" not in meta:
        return
    recorded = meta["detector_config"]
    if not isinstance(recorded, dict):
        raise _invalid(path, f"its recorded detector_config is not a mapping: {_quote(recorded)}")
    for name, check in RECORDED_OPTION_CHECKS.items():
        if name in recorded:
            check(path, name, recorded[name])


_OUR_TENSORS = ("ctx_normal", "ctx_anomaly", "deep_prompts")


def _load_ours(path: Path) -> PromptCheckpoint:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            names = list(f.keys())
            tensors = {k: f.get_tensor(k) for k in names if k in _OUR_TENSORS}
    except Exception as e:  # safetensors reports a bad file in several types
        raise S2SWError(f"cannot read prompt checkpoint {path}: not a valid safetensors file "
                        f"({first_line(e)})") from None
    if metadata.get("format") != FORMAT_TAG:
        raise S2SWError(f"{path} is not a prompt checkpoint: a safetensors file without the "
                        f"'{FORMAT_TAG}' format tag (pass a file written by 's2swclip train')")
    version = metadata.get("format_version", str(FORMAT_VERSION))
    if version != str(FORMAT_VERSION):
        raise _invalid(path, f"format version {_quote(version)}; this s2swclip reads version "
                             f"{FORMAT_VERSION} (update s2swclip)")
    unknown = sorted(set(names) - set(_OUR_TENSORS))
    if unknown:
        raise _invalid(path, f"unexpected tensor(s) {', '.join(map(_quote, unknown[:3]))}")
    missing = [k for k in _OUR_TENSORS if k not in tensors]
    if missing:
        raise _invalid(path, f"it lacks the tensor(s) {', '.join(missing)}")
    config = _json_mapping(path, metadata, "config", required=True)
    meta = _json_mapping(path, metadata, "meta", required=False)
    ctx_normal = _prompt_tensor(path, "ctx_normal", tensors["ctx_normal"], dims=2)
    ctx_anomaly = _prompt_tensor(path, "ctx_anomaly", tensors["ctx_anomaly"], dims=2)
    deep = _prompt_tensor(path, "deep_prompts", tensors["deep_prompts"], dims=3)
    n_ctx = _int_option(path, "config", "n_ctx", config.get("n_ctx"), 1)
    depth = _int_option(path, "config", "depth", config.get("depth"), 1)
    deep_tokens = _int_option(path, "config", "deep_tokens", config.get("deep_tokens"), 0)
    _check_prompts(path, ctx_normal, ctx_anomaly, deep, _OUR_TENSORS)
    width = ctx_normal.shape[1]
    for name, shape in (("ctx_normal", (n_ctx, width)), ("deep_prompts", (depth - 1, deep_tokens, width))):
        if tuple(tensors[name].shape) != shape:
            raise _invalid(path, f"{name} has shape {tuple(tensors[name].shape)}, but its config "
                                 f"(n_ctx={n_ctx}, depth={depth}, deep_tokens={deep_tokens}) says {shape}")
    if depth > 1 and deep_tokens > n_ctx:
        raise _invalid(path, f"config deep_tokens={deep_tokens} exceeds n_ctx={n_ctx}")
    if "vocabulary" in config:
        _check_vocabulary(path, config["vocabulary"])
    _check_meta(path, meta)
    return PromptCheckpoint("s2swclip", tensors, config, meta, path=str(path))


_DEEP_PREFIX = "compound_prompts_text."


def _load_authors(path: Path) -> PromptCheckpoint:
    if is_torchscript_archive(path):
        raise S2SWError(f"{path} is a TorchScript archive (a model such as OpenAI's CLIP .pt), not "
                        f"a prompt checkpoint: pass it as the weights; as the prompts, pass a file "
                        f"written by 's2swclip train' or the authors' .pth", fields=["weights", "prompts"])
    try:
        obj = torch_load_tensors(path)
    except UnreadableFile as e:
        raise S2SWError(f"cannot read prompt checkpoint {path}: not a safetensors prompt file nor "
                        f"the authors' .pth ({e})") from None
    sd = obj.get("prompt_learner") if isinstance(obj, dict) else None
    if not isinstance(sd, dict) or "ctx_pos" not in sd or "ctx_neg" not in sd:
        raise S2SWError(f"{path} is not a prompt checkpoint: expected an s2swclip .safetensors file "
                        f"or the authors' {{'prompt_learner': ...}} .pth with ctx_pos/ctx_neg")
    bad_keys = [k for k in sd if not isinstance(k, str)]
    if bad_keys:
        raise _invalid(path, f"prompt_learner has a key that is not a name: {_quote(bad_keys[0])}")
    ctx_pos = _prompt_tensor(path, "ctx_pos", sd["ctx_pos"], dims=4)
    ctx_neg = _prompt_tensor(path, "ctx_neg", sd["ctx_neg"], dims=4)
    if ctx_pos.shape[:2] != (1, 1) or ctx_neg.shape != ctx_pos.shape:
        raise _invalid(path, f"ctx_pos/ctx_neg must both have shape [1, 1, n_ctx, W], got "
                             f"{tuple(ctx_pos.shape)} and {tuple(ctx_neg.shape)}")
    n_ctx, width = ctx_pos.shape[2], ctx_pos.shape[3]
    ctx_normal, ctx_anomaly = ctx_pos.reshape(n_ctx, width), ctx_neg.reshape(n_ctx, width)
    deep = _authors_deep_prompts(path, sd, width)
    _check_prompts(path, ctx_normal, ctx_anomaly, deep, ("ctx_pos", "ctx_neg", "compound_prompts_text"))
    tensors = {"ctx_normal": ctx_normal, "ctx_anomaly": ctx_anomaly, "deep_prompts": deep}
    config = {"n_ctx": int(n_ctx), "depth": int(deep.shape[0]) + 1, "deep_tokens": int(deep.shape[1])}
    fixed = {}
    for family in FAMILIES:
        buffers = _authors_fixed_buffers(path, sd, family, width)
        if buffers is not None:
            fixed[family] = buffers
    return PromptCheckpoint("authors", tensors, config, {}, fixed, path=str(path))


def _authors_deep_prompts(path: Path, sd: dict[str, Any], width: int) -> torch.Tensor:
    """``compound_prompts_text.0 .. .k`` [t, W] stacked to [k+1, t, W] ([0, 0, W] if none)."""
    by_index = {}
    for key in sd:
        if key.startswith(_DEEP_PREFIX):
            index = key[len(_DEEP_PREFIX):]
            if not re.fullmatch(r"0|[1-9][0-9]{0,3}", index):
                raise _invalid(path, f"unknown deep-prompt key {_quote(key)} (expected "
                                     f"{_DEEP_PREFIX}<layer index>)")
            by_index[int(index)] = _prompt_tensor(path, key, sd[key], dims=2)
    if not by_index:
        return torch.zeros(0, 0, width)
    if sorted(by_index) != list(range(len(by_index))):
        raise _invalid(path, f"deep prompts must be numbered {_DEEP_PREFIX}0..{len(by_index) - 1} "
                             f"without gaps, got indices {sorted(by_index)[:10]}")
    shapes = {tuple(t.shape) for t in by_index.values()}
    if len(shapes) != 1:
        raise _invalid(path, f"deep prompts have unequal shapes {sorted(shapes)[:3]}")
    return torch.stack([by_index[i] for i in range(len(by_index))])


def _authors_fixed_buffers(path: Path, sd: dict[str, Any], family: str, width: int):
    """A family's fixed (prefix [2, 1, W], suffix [2, S, W], eot [2]) from the released buffers.

    None if the checkpoint has none of them (the learner's rebuilt ones are used then).
    """
    s = AUTHORS_SUFFIX[family]
    keys = [f"token_prefix_pos{s}", f"token_prefix_neg{s}", f"token_suffix_pos{s}",
            f"token_suffix_neg{s}", f"tokenized_prompts_pos{s}", f"tokenized_prompts_neg{s}"]
    present = [k for k in keys if k in sd]
    if not present:
        return None
    if len(present) != len(keys):
        missing = [k for k in keys if k not in sd]
        raise _invalid(path, f"the {family} family's fixed buffers are incomplete: "
                             f"{', '.join(missing)} missing")
    embedded = []
    for pos_key, neg_key in ((keys[0], keys[1]), (keys[2], keys[3])):
        pos, neg = (_prompt_tensor(path, k, sd[k]) for k in (pos_key, neg_key))
        if (pos.shape != neg.shape or pos.dim() < 2 or pos.shape[-1] != width
                or any(d != 1 for d in pos.shape[:-2])):
            raise _invalid(path, f"{pos_key}/{neg_key} must both have shape [1, ..., 1, S, {width}], "
                                 f"got {tuple(pos.shape)} and {tuple(neg.shape)}")
        embedded.append(torch.cat([pos.reshape(1, *pos.shape[-2:]), neg.reshape(1, *neg.shape[-2:])]))
    tokens = []
    for key in keys[4:]:
        value = sd[key]
        if (not isinstance(value, torch.Tensor) or value.layout != torch.strided
                or value.is_floating_point() or value.is_complex() or value.dtype == torch.bool
                or value.numel() == 0 or any(d != 1 for d in value.shape[:-1])):
            raise _invalid(path, f"{key} must be a [1, ..., 1, L] tensor of token ids")
        tokens.append(value.reshape(-1))
    if tokens[0].numel() != tokens[1].numel():
        raise _invalid(path, f"{keys[4]} and {keys[5]} differ in length")
    eot = torch.stack([t.argmax() for t in tokens])
    return embedded[0].float(), embedded[1].float(), eot
