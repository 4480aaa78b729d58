"""Entropy-gain similarity between patch features and text, and the maps made from it.

Implements ``docs/method.md`` §5:

* ``H(x)``: Shannon entropy of ``softmax(x)`` over the last axis, natural log,
  ``1e-10`` added inside the log (as the released code does);
* ``R(x)``: Rényi entropy of order 0.5 of ``softmax(x)``,
  ``2 * log(sum(p**0.5 + 1e-10))`` — the ``1e-10`` is added to EVERY element before
  the sum, as the released code does;
* ``sim = softmax_k((F . T_k) * (1 - |H(F) - H(T_k)|) * (1 - |R(F) - R(T_ref_k)|) / 0.07)``;
* maps: drop the class token, reshape the ``G x G`` grid, bilinear resize
  (``align_corners=False``); the anomaly map is ``(p_anomaly + 1 - p_normal) / 2``.

Unlike the released code, no ``[B, N, K, C]`` product tensor is formed: the dot
product is a matmul and the entropies are per-vector. Everything is
differentiable (training back-propagates through ``text``).
"""

from __future__ import annotations

import math
from typing import Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "shannon_entropy",
    "renyi_entropy",
    "entropy_gain_similarity",
    "probs_to_maps",
    "anomaly_map",
]

_EPS = 1e-10


def shannon_entropy(x: Tensor, eps: float = _EPS) -> Tensor:
    """Shannon entropy (nats) of ``softmax(x)`` over the last axis.

    ``p = softmax(x); H = -sum(p * log(p + eps))``.

    Args:
        x: Tensor of shape ``[..., C]`` (logits; e.g. normalised features).
        eps: added inside the log (``1e-10`` in the released code).

    Returns:
        Tensor of shape ``[...]``.
    """
    p = torch.softmax(x, dim=-1)
    return -(p * torch.log(p + eps)).sum(dim=-1)


def renyi_entropy(x: Tensor, alpha: float = 0.5, eps: float = _EPS) -> Tensor:
    """Rényi entropy (nats) of ``softmax(x)`` over the last axis, order ``alpha`` (0.5).

    ``p = softmax(x); R = log(sum(p**alpha + eps)) / (1 - alpha)`` — ``eps`` is added
    to every element inside the sum (released-code behaviour), so for ``alpha = 0.5``
    this is ``2 * log(sum(sqrt(p)) + C * 1e-10)``.

    Args:
        x: Tensor of shape ``[..., C]``.
        alpha: order, ``!= 1``.
        eps: added to each ``p**alpha`` term.

    Returns:
        Tensor of shape ``[...]``.
    """
    if alpha == 1:
        raise ValueError("renyi_entropy: alpha = 1 is the Shannon limit; use shannon_entropy")
    p = torch.softmax(x, dim=-1)
    return (1.0 / (1.0 - alpha)) * torch.log((p**alpha + eps).sum(dim=-1))


def entropy_gain_similarity(
    features: Tensor,
    text: Tensor,
    text_ref: Tensor,
    temperature: float = 0.07,
) -> Tensor:
    """Entropy-gain similarity of every token against every text row (``docs/method.md`` §5.1).

    ``dot = F @ T^T``; ``gH = 1 - |H(F) - H(T)|``; ``gR = 1 - |R(F) - R(T_ref)|``;
    result ``softmax_K(dot * gH * gR / temperature)``. Memory is ``O(B N (K + C))``:
    no ``[B, N, K, C]`` tensor is formed.

    Mixed floating dtypes follow the released code: each entropy is computed in its
    input's dtype, the products in the promoted dtype (float32 features with float64
    fused text give float64 output; ``docs/method.md`` §10.6).

    Args:
        features: Tensor of shape ``[B, N, C]``, normalised token features (class token
            included). Any leading axes are accepted.
        text: Tensor of shape ``[K, C]``, normalised text features (``K = 2``: normal,
            anomaly).
        text_ref: Tensor of shape ``[K, C]``, reference text for the Rényi gain (the
            normalised fused text).
        temperature: softmax temperature (0.07).

    Returns:
        Tensor of shape ``[B, N, K]``; sums to 1 over ``K``.
    """
    if text.dim() != 2 or text_ref.shape != text.shape or features.shape[-1] != text.shape[-1]:
        raise ValueError(
            "entropy_gain_similarity expects features [..., C] and text, text_ref [K, C]; got "
            f"{tuple(features.shape)}, {tuple(text.shape)}, {tuple(text_ref.shape)}"
        )
    # Entropies in each input's own dtype, products in the promoted one (the released
    # code's precision when its float64 fused text meets float32 features).
    h_f, r_f = shannon_entropy(features), renyi_entropy(features)  # [B, N]
    h_t, r_t = shannon_entropy(text), renyi_entropy(text_ref)  # [K]
    dtype = torch.promote_types(torch.promote_types(features.dtype, text.dtype), text_ref.dtype)

    dot = features.to(dtype) @ text.to(dtype).transpose(0, 1)  # [B, N, K]
    gain_h = 1 - (h_f.unsqueeze(-1) - h_t).abs()  # [B, N, K]
    gain_r = 1 - (r_f.unsqueeze(-1) - r_t).abs()  # [B, N, K]
    return (dot * gain_h * gain_r / temperature).softmax(dim=-1)


def probs_to_maps(probs: Tensor, image_size: Union[int, Sequence[int]]) -> Tensor:
    """Token probabilities to image-sized maps.

    Drops token 0 (class token), reshapes the remaining ``G * G`` tokens row-major to
    a ``G x G`` grid and resizes bilinearly (``align_corners=False``) to the image.

    Args:
        probs: Tensor of shape ``[B, N, K]`` with ``N = G * G + 1``.
        image_size: output side ``S`` (or ``(S_h, S_w)``).

    Returns:
        Tensor of shape ``[B, K, S, S]``.
    """
    if probs.dim() != 3:
        raise ValueError(f"probs_to_maps expects [B, N, K], got {tuple(probs.shape)}")
    b, n, k = probs.shape
    g = math.isqrt(max(n - 1, 0))
    if n < 2 or g * g != n - 1:
        raise ValueError(f"probs_to_maps: N - 1 = {n - 1} patch tokens do not form a square grid")
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    grid = probs[:, 1:, :].reshape(b, g, g, k).permute(0, 3, 1, 2)  # [B, K, G, G]
    maps = F.interpolate(grid, size=size, mode="bilinear", align_corners=False)
    return maps.contiguous()


def anomaly_map(probs_maps: Tensor) -> Tensor:
    """Anomaly map of one layer: ``(p_anomaly + 1 - p_normal) / 2``.

    Args:
        probs_maps: Tensor of shape ``[B, 2, ...]`` (channel 0 normal, 1 anomaly), e.g.
            ``[B, 2, S, S]`` from :func:`probs_to_maps` or ``[B, 2, N]`` per token.

    Returns:
        Tensor of shape ``[B, ...]``.
    """
    if probs_maps.dim() < 2 or probs_maps.shape[1] != 2:
        raise ValueError(f"anomaly_map expects [B, 2, ...], got {tuple(probs_maps.shape)}")
    return (probs_maps[:, 1] + 1 - probs_maps[:, 0]) / 2
