"""The three prompt families with shared learnable contexts (``docs/method.md`` §3.1-§3.3).

Each family has a normal and an anomaly sentence ``"<ctx> words."`` whose word embeddings are
fixed; the ``n_ctx`` context positions hold two learnable tensors shared by all families:
``ctx_normal`` and ``ctx_anomaly`` ([n_ctx, W_text]). Deep text prompts ([depth-1, t, W_text])
replace positions ``1..t`` before text blocks ``1..depth-1`` (see :mod:`.backbone`).

Vocabularies are data: pass ``vocabulary={"generic": (normal, anomaly), ...}`` to change them.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

FAMILIES = ("generic", "contrastive", "referenced")

DEFAULT_VOCABULARY: dict[str, tuple[str, str]] = {
    # object-agnostic
    "generic": ("object", "damaged object"),
    # contrastive normal-anomaly vocabulary
    "contrastive": (
        "perfectly pristine flawless perfect intact consistent uniform normal stable standard well ideal",
        "severely distorted flawed warped broken cracked uneven anomalous irregular aberrant unusual deformed",
    ),
    # anomaly-referenced vocabulary
    "referenced": (
        "perfectly good normal intact clean healthy flawless perfect ideal standard",
        "crack scratch dent stain discoloration bubble corrosion flaking deformation hole loose scar foam",
    ),
}

# buffer-name suffixes of the released code's AnomalyCLIP_PromptLearner, per family
AUTHORS_SUFFIX = {"generic": "", "contrastive": "_emo", "referenced": "_class"}


def tokenize(texts: list[str], context_length: int) -> torch.Tensor:
    """CLIP BPE token ids [len(texts), context_length] (SOT ... EOT, zero padded)."""
    import open_clip

    return open_clip.tokenize(texts, context_length=context_length).long()


class PromptLearner(nn.Module):
    """Learnable prompt parameters plus the fixed word embeddings of the three families.

    Args:
        token_embedding: callable [P, L] ids -> [P, L, W] (the backbone's token embedding).
        text_width: W, the text transformer width.
        context_length: L, the text context length (77 for CLIP).
        n_ctx: learnable context length (paper: 14).
        depth: deep prompt depth; ``depth - 1`` blocks get deep prompts (paper: 9).
        deep_tokens: t, deep prompt tokens per block (paper: 4).
        vocabulary: family -> (normal words, anomaly words).
        generator: torch.Generator for the N(0, 0.02) initialisation.
    """

    def __init__(
        self,
        token_embedding,
        text_width: int,
        context_length: int = 77,
        n_ctx: int = 14,
        depth: int = 9,
        deep_tokens: int = 4,
        vocabulary: Mapping[str, tuple[str, str]] | None = None,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        if n_ctx < 1 or depth < 1 or deep_tokens < 0:
            raise ValueError(f"need n_ctx >= 1, depth >= 1, deep_tokens >= 0; got {n_ctx}, {depth}, {deep_tokens}")
        if depth > 1 and deep_tokens > n_ctx:
            raise ValueError(f"deep_tokens ({deep_tokens}) cannot exceed n_ctx ({n_ctx})")
        vocabulary = dict(DEFAULT_VOCABULARY if vocabulary is None else vocabulary)
        if set(vocabulary) != set(FAMILIES):
            raise ValueError(f"vocabulary needs exactly the families {FAMILIES}, got {sorted(vocabulary)}")
        self.vocabulary = {f: (str(vocabulary[f][0]), str(vocabulary[f][1])) for f in FAMILIES}
        self.n_ctx, self.depth, self.deep_tokens = n_ctx, depth, deep_tokens
        self.text_width, self.context_length = text_width, context_length

        def normal(*shape):
            return torch.randn(*shape, generator=generator) * 0.02

        self.ctx_normal = nn.Parameter(normal(n_ctx, text_width))
        self.ctx_anomaly = nn.Parameter(normal(n_ctx, text_width))
        self.deep_prompts = nn.Parameter(normal(depth - 1, deep_tokens, text_width))

        placeholder = " ".join(["X"] * n_ctx)
        for family in FAMILIES:
            sentences = [f"{placeholder} {words}." for words in self.vocabulary[family]]
            tokens = tokenize(sentences, context_length)
            if (tokens[:, -1] != 0).any():
                raise ValueError(f"the {family} vocabulary is too long for the text context "
                                 f"length {context_length}")
            with torch.no_grad():
                emb = token_embedding(tokens).float()
            self.register_buffer(f"{family}_prefix", emb[:, :1].clone())  # [2, 1, W]
            self.register_buffer(f"{family}_suffix", emb[:, 1 + n_ctx:].clone())  # [2, L-1-n_ctx, W]
            self.register_buffer(f"{family}_eot", tokens.argmax(dim=-1))  # [2]

    def family_prompts(self, family: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt embeddings [2, L, W] (rows: normal, anomaly) and EOT positions [2]."""
        ctx = torch.stack([self.ctx_normal, self.ctx_anomaly])
        prefix = getattr(self, f"{family}_prefix")
        suffix = getattr(self, f"{family}_suffix")
        return torch.cat([prefix, ctx.to(prefix.dtype), suffix], dim=1), getattr(self, f"{family}_eot")

    def config(self) -> dict:
        """The hyper-parameters needed to rebuild this learner."""
        return {"n_ctx": self.n_ctx, "depth": self.depth, "deep_tokens": self.deep_tokens,
                "vocabulary": {f: list(v) for f, v in self.vocabulary.items()}}

    def parameter_tensors(self) -> dict[str, torch.Tensor]:
        return {"ctx_normal": self.ctx_normal, "ctx_anomaly": self.ctx_anomaly,
                "deep_prompts": self.deep_prompts}

    @torch.no_grad()
    def load_parameter_tensors(self, tensors: Mapping[str, torch.Tensor], source: str = "checkpoint") -> None:
        """Copy ``ctx_normal``, ``ctx_anomaly``, ``deep_prompts`` in, checking shapes."""
        for name, param in self.parameter_tensors().items():
            if name not in tensors:
                raise KeyError(f"{source} lacks {name}")
            value = tensors[name]
            if tuple(value.shape) != tuple(param.shape):
                raise ValueError(f"{source}: {name} has shape {tuple(value.shape)}, "
                                 f"expected {tuple(param.shape)}")
            param.copy_(value.to(param.dtype))

    @torch.no_grad()
    def load_fixed_embeddings(self, family: str, prefix: torch.Tensor, suffix: torch.Tensor,
                              eot: torch.Tensor) -> None:
        """Replace a family's fixed word embeddings (as a released checkpoint's buffers do)."""
        for name, value in (("prefix", prefix), ("suffix", suffix), ("eot", eot)):
            buf = getattr(self, f"{family}_{name}")
            if tuple(value.shape) != tuple(buf.shape):
                raise ValueError(f"{family} {name}: shape {tuple(value.shape)}, expected {tuple(buf.shape)}")
            buf.copy_(value.to(buf.dtype))
