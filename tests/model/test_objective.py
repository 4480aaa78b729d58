"""The training objective (``docs/method.md`` §8) assembled from its terms, computed step by step."""

import torch
import torch.nn.functional as F

import s2swclip.model.objective as objective
from s2swclip.model.losses import dice_loss, focal_loss
from s2swclip.model.similarity import entropy_gain_similarity, probs_to_maps

from helpers import make_images


def test_objective_terms_and_weights(own_detector, monkeypatch):
    det = own_detector
    det.train()
    images = make_images(4, 224, seed=8)
    masks = torch.zeros(4, 224, 224)
    masks[1, 40:90, 60:120] = 1
    labels = torch.tensor([0, 1, 0, 1])
    seen = []
    real = objective.pairwise_loss
    monkeypatch.setattr(objective, "pairwise_loss",
                        lambda *a, **k: seen.append(k["hinge"]) or real(*a, **k))
    out = objective.s2sw_objective(det, images, masks, labels, alpha=0.25, beta=0.5,
                                   generator=torch.Generator().manual_seed(0), pairwise_hinge=True)
    assert seen == [True, True, True]  # generic, contrastive, fused
    with torch.no_grad():
        glob, patches = det.backbone.encode_image(images)
        text = det.encode_text_features()
        pixel = {}
        for fam in ("generic", "contrastive"):
            total = 0
            for p in patches:  # all four layers, one by one
                f = p / p.norm(dim=-1, keepdim=True)
                maps = probs_to_maps(entropy_gain_similarity(f, text.unit[fam], text.unit["fused"]), 224)
                total = total + focal_loss(maps, masks) + dice_loss(maps[:, 1], masks) + dice_loss(maps[:, 0], 1 - masks)
            pixel[fam] = total
        g = glob / glob.norm(dim=-1, keepdim=True)
        ce = sum(F.cross_entropy(g @ text.unit[k].t() / 0.07, labels)
                 for k in ("generic", "contrastive", "referenced", "fused"))
    assert abs(out["pixel_generic"].item() - pixel["generic"].item()) < 1e-4
    assert abs(out["pixel_contrastive"].item() - pixel["contrastive"].item()) < 1e-4
    assert abs(out["image_ce"].item() - ce.item()) < 1e-5
    expected = 0.25 * pixel["generic"] + pixel["contrastive"] + ce + 0.5 * out["pairwise"].detach()
    assert abs(out["total"].item() - expected.item()) < 1e-4
    out["total"].backward()
    assert det.prompts.ctx_normal.grad.abs().sum() > 0 and det.prompts.deep_prompts.grad.abs().sum() > 0
