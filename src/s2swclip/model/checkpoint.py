"""Prompt checkpoints: this package's format and the authors' released format.

* Ours: a ``.safetensors`` file with tensors ``ctx_normal`` [n_ctx, W], ``ctx_anomaly``
  [n_ctx, W], ``deep_prompts`` [depth-1, t, W] and JSON metadata (format tag, prompt learner
  config incl. vocabularies, backbone, training info). Safe to load, loads anywhere.
* The authors': a ``.pth`` holding ``{"prompt_learner": state_dict}`` of their
  AnomalyCLIP_PromptLearner (``ctx_pos``/``ctx_neg`` [1, 1, n_ctx, W],
  ``compound_prompts_text.k`` [t, W], fixed ``token_prefix*``/``token_suffix*``/
  ``tokenized_prompts*`` buffers, unused ``compound_prompt_projections.*``). Read with
  ``torch.load(weights_only=True)``. Its fixed buffers are used as the released code would (its
  ``load_state_dict`` overwrites the rebuilt ones).

Writes are atomic: a temporary file in the target folder, then ``os.replace``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import S2SWError
from ..fileio import atomic_write_bytes
from .prompts import AUTHORS_SUFFIX, FAMILIES, PromptLearner

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
            raise S2SWError(f"prompt checkpoint {self.path} does not fit this backbone: {e} "
                            f"(was it trained with another --backbone?)") from None


def save_prompts(path: str | os.PathLike, learner: PromptLearner, meta: dict[str, Any] | None = None) -> None:
    """Save ``learner``'s parameters in this package's safetensors format, atomically."""
    from safetensors.torch import save

    tensors = {k: v.detach().float().cpu().contiguous() for k, v in learner.parameter_tensors().items()}
    metadata = {"format": FORMAT_TAG, "format_version": str(FORMAT_VERSION),
                "config": json.dumps(learner.config()), "meta": json.dumps(meta or {})}
    atomic_write_bytes(path, save(tensors, metadata=metadata))


def load_prompts(path: str | os.PathLike) -> PromptCheckpoint:
    """Read a prompt checkpoint of either format (detected from the content)."""
    path = Path(os.path.expanduser(str(path)))
    if not path.is_file():
        raise S2SWError(f"prompt checkpoint not found: {path} (pass a file written by "
                        f"'s2swclip train' or the authors' epoch_N.pth)")
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) == 9 and head[8:9] == b"{":  # safetensors: u64 header length, then JSON
        return _load_ours(path)
    return _load_authors(path)


def _load_ours(path: Path) -> PromptCheckpoint:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        if metadata.get("format") != FORMAT_TAG:
            raise ValueError("not an s2swclip prompt file")
        config = json.loads(metadata["config"])
        meta = json.loads(metadata.get("meta", "{}"))
    except Exception as e:
        raise S2SWError(f"cannot read prompt checkpoint {path}: {e}") from None
    return PromptCheckpoint("s2swclip", tensors, config, meta, path=str(path))


def _load_authors(path: Path) -> PromptCheckpoint:
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise S2SWError(f"cannot read prompt checkpoint {path}: {type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else 'corrupt or not a checkpoint'}") from None
    sd = obj.get("prompt_learner") if isinstance(obj, dict) else None
    if not isinstance(sd, dict) or "ctx_pos" not in sd or "ctx_neg" not in sd:
        raise S2SWError(f"{path} is not a prompt checkpoint: expected an s2swclip .safetensors file "
                        f"or the authors' {{'prompt_learner': ...}} .pth with ctx_pos/ctx_neg")
    ctx_pos, ctx_neg = sd["ctx_pos"], sd["ctx_neg"]
    if ctx_pos.dim() != 4 or ctx_pos.shape[:2] != (1, 1) or ctx_neg.shape != ctx_pos.shape:
        raise S2SWError(f"{path}: ctx_pos/ctx_neg must have shape [1, 1, n_ctx, W], got "
                        f"{tuple(ctx_pos.shape)} and {tuple(ctx_neg.shape)}")
    n_ctx, width = ctx_pos.shape[2], ctx_pos.shape[3]
    deep_keys = sorted((k for k in sd if k.startswith("compound_prompts_text.")),
                       key=lambda k: int(k.rsplit(".", 1)[1]))
    if deep_keys:
        deep = torch.stack([sd[k] for k in deep_keys])
    else:
        deep = torch.zeros(0, 0, width)
    tensors = {"ctx_normal": ctx_pos.reshape(n_ctx, width), "ctx_anomaly": ctx_neg.reshape(n_ctx, width),
               "deep_prompts": deep}
    config = {"n_ctx": int(n_ctx), "depth": len(deep_keys) + 1, "deep_tokens": int(deep.shape[1])}
    fixed = {}
    for family in FAMILIES:
        s = AUTHORS_SUFFIX[family]
        keys = [f"token_prefix_pos{s}", f"token_prefix_neg{s}", f"token_suffix_pos{s}",
                f"token_suffix_neg{s}", f"tokenized_prompts_pos{s}", f"tokenized_prompts_neg{s}"]
        if all(k in sd for k in keys):
            pp, pn, sp, sn, tp, tn = (sd[k] for k in keys)
            prefix = torch.cat([pp.reshape(1, *pp.shape[-2:]), pn.reshape(1, *pn.shape[-2:])])
            suffix = torch.cat([sp.reshape(1, *sp.shape[-2:]), sn.reshape(1, *sn.shape[-2:])])
            eot = torch.stack([tp.reshape(-1).argmax(), tn.reshape(-1).argmax()])
            fixed[family] = (prefix.float(), suffix.float(), eot)
    return PromptCheckpoint("authors", tensors, config, {}, fixed, path=str(path))
