"""Training losses: focal, Dice and the pairwise image term.

Implements the loss functions of ``docs/method.md`` §8.1 and §8.3 with the released
code's exact definitions (label-smoothed focal loss on probabilities, batch-mean
soft Dice with smoothing 1, and the random-pair term). All are differentiable.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["focal_loss", "dice_loss", "pairwise_loss"]


def focal_loss(probs: Tensor, target: Tensor, gamma: float = 2.0, smooth: float = 1e-5) -> Tensor:
    """Focal loss on class probabilities, with clamped one-hot targets.

    Rows ``M = B * H * W`` of ``K`` probabilities: the one-hot target is clamped to
    ``[smooth / (K - 1), 1 - smooth]``; ``pt = sum_k onehot_k * p_k + smooth``;
    ``loss = mean(-(1 - pt)**gamma * log(pt))`` (class weights all 1, as released).

    Args:
        probs: Tensor of shape ``[B, K, H, W]`` (``K = 2``: normal, anomaly), probabilities
            (not logits).
        target: Tensor of shape ``[B, H, W]`` (or ``[B, 1, H, W]``) with class indices
            in ``{0, .., K-1}`` (a binary mask for ``K = 2``); float masks are cast.
        gamma: focusing exponent.
        smooth: label smoothing and ``pt`` offset.

    Returns:
        Scalar tensor.
    """
    if probs.dim() < 2:
        raise ValueError(f"focal_loss expects probs [B, K, ...], got {tuple(probs.shape)}")
    k = probs.shape[1]
    if k < 2:
        raise ValueError("focal_loss needs at least 2 classes")
    if target.dim() == probs.dim():
        target = target.squeeze(1)
    rows = probs.reshape(probs.shape[0], k, -1).transpose(1, 2).reshape(-1, k)  # [M, K]
    idx = target.reshape(-1).long()
    if idx.numel() != rows.shape[0]:
        raise ValueError(f"focal_loss: target {tuple(target.shape)} does not match probs {tuple(probs.shape)}")
    one_hot = F.one_hot(idx, k).to(rows.dtype)
    one_hot = one_hot.clamp(smooth / (k - 1), 1.0 - smooth)
    pt = (one_hot * rows).sum(dim=1) + smooth
    return (-torch.pow(1 - pt, gamma) * pt.log()).mean()


def dice_loss(pred: Tensor, target: Tensor, smooth: float = 1.0) -> Tensor:
    """Soft Dice loss, averaged over the batch.

    Per sample ``dice = (2 * sum(pred * target) + smooth) / (sum(pred) + sum(target) + smooth)``;
    ``loss = 1 - mean_B(dice)``.

    Args:
        pred: Tensor of shape ``[B, H, W]`` (one probability channel).
        target: Tensor of shape ``[B, H, W]`` (binary mask, or its complement).
        smooth: additive smoothing (1 in the released code).

    Returns:
        Scalar tensor.
    """
    b = target.shape[0]
    p = pred.reshape(b, -1)
    t = target.reshape(b, -1).to(p.dtype)
    dice = (2 * (p * t).sum(dim=1) + smooth) / (p.sum(dim=1) + t.sum(dim=1) + smooth)
    return 1 - dice.sum() / b


def _pick_pair(batch: int, generator: Optional[torch.Generator], random_pair_prob: float) -> tuple[int, int]:
    """Indices of the two compared samples (torch RNG on the generator's device, CPU by default).

    With probability ``random_pair_prob``: two distinct random samples; otherwise
    sample 0 and a uniformly random one of ``1 .. batch-1``.
    """
    dev = generator.device if generator is not None else torch.device("cpu")
    if torch.rand((), generator=generator, device=dev).item() < random_pair_prob:
        i, j = torch.randperm(batch, generator=generator, device=dev)[:2].tolist()
        return i, j
    return 0, int(torch.randint(1, batch, (), generator=generator, device=dev).item())


def pairwise_loss(
    logits: Tensor,
    labels: Tensor,
    generator: Optional[torch.Generator] = None,
    random_pair_prob: float = 0.2,
    hinge: bool = False,
) -> Tensor:
    """Pairwise image term on one random pair of the batch.

    Picks two samples ``i, j`` (see below), ``d = |logits[i, 1] - logits[j, 1]|``:
    same label -> ``0.5 * d**2``; different labels -> ``0.5 * (1 - d)**2``
    (released-code behaviour, which grows again for ``d > 1``), or with
    ``hinge=True`` the paper's ``0.5 * max(0, 1 - d)**2`` (``docs/method.md`` §10.4).

    Pair choice (torch RNG, reproducible with ``generator``): with probability
    ``random_pair_prob`` two distinct random samples, else sample 0 and a random
    other one. The released code draws with Python's ``random``, so the sequence of
    pairs differs; the distribution is the same.

    Args:
        logits: Tensor of shape ``[B, 2]`` (image logits; column 1 = anomaly).
        labels: Tensor of shape ``[B]`` with 0 = normal, 1 = anomalous.
        generator: optional :class:`torch.Generator` for the pair choice.
        random_pair_prob: probability of a fully random pair (0.2).
        hinge: use ``max(0, 1 - d)`` for different labels.

    Returns:
        Scalar tensor; a zero tensor when ``B < 2``.
    """
    b = logits.shape[0]
    if b < 2:
        return logits.new_zeros(())
    i, j = _pick_pair(b, generator, random_pair_prob)
    d = (logits[i, 1] - logits[j, 1]).abs()
    if bool(labels[i] == labels[j]):
        return 0.5 * d**2
    gap = (1.0 - d).clamp(min=0) if hinge else 1.0 - d
    return 0.5 * gap**2
