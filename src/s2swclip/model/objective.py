"""The training objective (``docs/method.md`` §8), assembled from :mod:`.losses`.

Per batch, with the backbone frozen:

* pixel loss for the generic and the contrastive families: plain normalised patch features of
  every selected layer, entropy-gain similarity against that family (reference: the fused text),
  maps resized to S x S; focal(probs, mask) + Dice(anomaly, mask) + Dice(normal, 1 - mask);
* image loss: cross-entropy of ``g . t / T`` for the four text sets, plus ``beta`` times the
  pairwise term over the generic, contrastive and fused sets;
* total = alpha * pixel_generic + pixel_contrastive + image CE + beta * pairwise.

The image features come from the frozen backbone (``images``) or are passed in precomputed
(``features``, e.g. from the training feature cache): the same losses either way.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from .detector import TEXT_SETS, DetectorOutput, S2SWDetector
from .losses import dice_loss, focal_loss, pairwise_loss
from .similarity import entropy_gain_similarity, probs_to_maps


def s2sw_objective(
    det: S2SWDetector,
    images: torch.Tensor | None,
    masks: torch.Tensor,
    labels: torch.Tensor,
    alpha: float = 1.0,
    beta: float = 0.03,
    generator: torch.Generator | None = None,
    random_pair_prob: float = 0.2,
    pairwise_hinge: bool = False,
    *,
    features: tuple[torch.Tensor, Sequence[torch.Tensor]] | None = None,
) -> dict[str, torch.Tensor]:
    """Loss terms for one batch.

    Args:
        det: the detector (its prompts get gradients).
        images: [B, 3, S, S] CLIP-normalised; None when ``features`` are given.
        masks: [B, S, S] binary ground truth (zeros for normal images).
        labels: [B] 0 normal / 1 anomalous.
        alpha, beta: weights of the generic pixel loss and of the pairwise term.
        generator: RNG for the pairwise sample choice.
        pairwise_hinge: use max(0, 1 - d)^2 / 2 for different labels (the paper's text) instead
            of the released code's (1 - d)^2 / 2.
        features: instead of ``images``, their frozen image features as
            :meth:`S2SWDetector.encode_image` returns them: global [B, C] and one [B, N, C]
            tensor per feature layer (aliased layers the same object); float32, any device.

    Returns:
        dict with ``total``, ``pixel_generic``, ``pixel_contrastive``, ``image_ce``, ``pairwise``.
    """
    if (images is None) == (features is None):
        raise ValueError("pass either images or features")
    size = masks.shape[-1] if images is None else images.shape[-1]
    masks = (masks.to(det.device).float() > 0.5).float()
    labels = labels.to(det.device).long()
    out = det(images) if features is None else _output_from_features(det, *features, batch=masks.shape[0])
    patches, text = out.patch_features, out.text
    temp = det.config.temperature

    pixel = {}
    for family in ("generic", "contrastive"):
        per_object: dict[int, torch.Tensor] = {}
        total = out.image_features.new_zeros(())
        for p in patches:  # aliased layers: same features, same loss
            if id(p) not in per_object:
                f = p / p.norm(dim=-1, keepdim=True)
                probs = entropy_gain_similarity(f, text.unit[family], text.unit["fused"], temp)
                maps = probs_to_maps(probs, size)  # [B, 2, S, S]
                per_object[id(p)] = (focal_loss(maps, masks) + dice_loss(maps[:, 1], masks)
                                     + dice_loss(maps[:, 0], 1 - masks))
            total = total + per_object[id(p)]
        pixel[family] = total

    logits = out.image_logits(temp)
    image_ce = sum(F.cross_entropy(logits[k], labels) for k in TEXT_SETS)
    pairwise = sum(pairwise_loss(logits[k], labels, generator=generator, random_pair_prob=random_pair_prob,
                                 hinge=pairwise_hinge)
                   for k in ("generic", "contrastive", "fused"))
    total = alpha * pixel["generic"] + pixel["contrastive"] + image_ce + beta * pairwise
    return {"total": total, "pixel_generic": pixel["generic"], "pixel_contrastive": pixel["contrastive"],
            "image_ce": image_ce, "pairwise": pairwise}


def _output_from_features(det: S2SWDetector, image_features: torch.Tensor, patch_features: Sequence[torch.Tensor],
                          batch: int) -> DetectorOutput:
    """:meth:`S2SWDetector.forward`'s output for precomputed image features (checked, moved to
    the detector's device; aliased layers stay one tensor object)."""
    dim, layers = det.backbone.embed_dim, len(det.backbone.feature_layers)
    if tuple(image_features.shape) != (batch, dim):
        raise ValueError(f"image features must be [{batch}, {dim}], got {tuple(image_features.shape)}")
    if len(patch_features) != layers or any(p.dim() != 3 or p.shape[0] != batch or p.shape[2] != dim
                                           for p in patch_features):
        raise ValueError(f"patch features must be {layers} tensors [{batch}, N, {dim}]")
    moved: dict[int, torch.Tensor] = {}
    for p in patch_features:
        if id(p) not in moved:
            moved[id(p)] = p.to(det.device, torch.float32)
    return DetectorOutput(image_features.to(det.device, torch.float32), [moved[id(p)] for p in patch_features],
                          det.text_features())
