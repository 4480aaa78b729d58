"""Hierarchical multi-scale fusion of patch features along the token axis.

Implements the visual-enrichment branch, ``docs/method.md`` §6.1. For normalised
token features ``F`` (``[B, N, C]``, class token included), ``h(F)`` mixes

* ``up``: the tokens linearly resampled (``align_corners=True``) to
  ``floor(1.5 N)`` positions and cropped to the first ``N``;
* a pooled path at a FIXED token count ``P = 384`` (the released value; it equals
  ``C / 2`` for ``C = 768`` only by coincidence, so it is not tied to ``C``; §10.7):
  average and max pooling over tokens, a channel max-pool of their concatenation,
  a softmax channel gate, a sigmoid, and linear resampling back to ``N`` tokens.

``h(F) = 0.01 * up + 0.99 * s_up``; the enriched features are
``normalise(0.2 * h(F) + 0.8 * F)``. When ``N < P`` adaptive pooling upsamples
(PyTorch's adaptive bins overlap), which is well defined.

For export, the resampling and pooling switch to their portable forms (same bins, positions
and arithmetic; :mod:`.portable`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .portable import adaptive_pool, linear_resample, portable

__all__ = ["hierarchical_multiscale", "enrich_features"]


def hierarchical_multiscale(
    features: Tensor,
    pooled_tokens: int = 384,
    up_weight: float = 0.01,
    pooled_weight: float = 0.99,
) -> Tensor:
    """Hierarchical multi-scale fusion ``h(F)`` along the token axis (``docs/method.md`` §6.1).

    Steps, with ``X = F^T`` of shape ``[B, C, N]``:

    * ``up = interp_linear(X, scale 1.5, align_corners=True)[..., :N]^T`` — ``[B, N, C]``;
    * ``a = adaptive_avg_pool1d(X, P)^T``, ``m = adaptive_max_pool1d(X, P)^T`` — ``[B, P, C]``;
    * ``c = adaptive_max_pool1d(cat([a, m], dim=2), C)`` (over the ``2C`` channel axis)
      — ``[B, P, C]``;
    * ``att = a + m``; ``w = softmax_C(mean_P(att))`` — ``[B, 1, C]``;
      ``g = w * a + (1 - w) * m``;
    * ``s = sigmoid(g + att + c)``, resampled linearly (``align_corners=True``) to ``N``
      tokens — ``s_up`` ``[B, N, C]``;
    * result ``up_weight * up + pooled_weight * s_up``.

    Args:
        features: Tensor of shape ``[B, N, C]`` (normalised token features).
        pooled_tokens: token count ``P`` of the pooled path (384, fixed).
        up_weight: weight of the upsampled path (0.01).
        pooled_weight: weight of the pooled path (0.99).

    Returns:
        Tensor of shape ``[B, N, C]``, same dtype and device as ``features``.
    """
    if features.dim() != 3:
        raise ValueError(f"hierarchical_multiscale expects [B, N, C], got {tuple(features.shape)}")
    _, n, c = features.shape
    x = features.transpose(1, 2)  # [B, C, N]

    if portable():
        up = linear_resample(x, math.floor(1.5 * n), keep=n)
        avg = adaptive_pool(x, pooled_tokens, "mean").transpose(1, 2)  # [B, P, C]
        mx = adaptive_pool(x, pooled_tokens, "max").transpose(1, 2)  # [B, P, C]
        chan = adaptive_pool(torch.cat([avg, mx], dim=2), c, "max")  # [B, P, 2C] -> [B, P, C]
    else:
        up = F.interpolate(x, scale_factor=1.5, mode="linear", align_corners=True)[:, :, :n]
        avg = F.adaptive_avg_pool1d(x, pooled_tokens).transpose(1, 2)  # [B, P, C]
        mx = F.adaptive_max_pool1d(x, pooled_tokens).transpose(1, 2)  # [B, P, C]
        # the channel max-pool of cat([a, m]) from 2C to C channels has bins of exactly two
        # neighbours: a max over the even and the odd channels gives its values ten times faster
        both = torch.cat([avg, mx], dim=2)  # [B, P, 2C]
        chan = torch.maximum(both[..., 0::2], both[..., 1::2])  # [B, P, C]
    up = up.transpose(1, 2)  # [B, N, C]

    att = avg + mx
    gate = torch.softmax(att.mean(dim=1, keepdim=True), dim=2)  # [B, 1, C]
    gated = gate * avg + (1 - gate) * mx
    s = torch.sigmoid(gated + att + chan)  # [B, P, C]
    if portable():
        s_up = linear_resample(s.transpose(1, 2), n).transpose(1, 2)
    else:
        s_up = F.interpolate(s.transpose(1, 2), size=n, mode="linear", align_corners=True).transpose(1, 2)

    return up_weight * up + pooled_weight * s_up


def enrich_features(features: Tensor, weight: float = 0.2, **kwargs) -> Tensor:
    """Visually enriched features ``normalise(weight * h(F) + (1 - weight) * F)``.

    Args:
        features: Tensor of shape ``[B, N, C]``, already L2-normalised over ``C``
            (class token included).
        weight: weight of :func:`hierarchical_multiscale` (0.2).
        **kwargs: forwarded to :func:`hierarchical_multiscale` (``pooled_tokens``,
            ``up_weight``, ``pooled_weight``).

    Returns:
        Tensor of shape ``[B, N, C]``, L2-normalised over the last axis.
    """
    mixed = hierarchical_multiscale(features, **kwargs) * weight + features * (1 - weight)
    return mixed / mixed.norm(dim=-1, keepdim=True)
