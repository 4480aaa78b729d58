"""Focal, Dice and pairwise losses against NumPy transcriptions."""

import numpy as np
import pytest
import torch

from s2swclip.model import losses
from s2swclip.model.losses import dice_loss, focal_loss, pairwise_loss


# ----------------------------------------------------------------------------- references
def np_focal(probs, target, gamma=2.0, smooth=1e-5):
    b, k = probs.shape[:2]
    rows = np.moveaxis(probs.reshape(b, k, -1), 1, 2).reshape(-1, k)
    t = target.reshape(-1).astype(np.int64)
    one_hot = np.zeros_like(rows)
    one_hot[np.arange(t.size), t] = 1.0
    one_hot = np.clip(one_hot, smooth / (k - 1), 1.0 - smooth)
    pt = (one_hot * rows).sum(1) + smooth
    return np.mean(-((1 - pt) ** gamma) * np.log(pt))


def np_dice(pred, target, smooth=1.0):
    b = pred.shape[0]
    p, t = pred.reshape(b, -1), target.reshape(b, -1)
    dice = (2 * (p * t).sum(1) + smooth) / (p.sum(1) + t.sum(1) + smooth)
    return 1 - dice.mean()


def np_pair(logits, labels, i, j, hinge=False):
    d = abs(logits[i, 1] - logits[j, 1])
    if labels[i] == labels[j]:
        return 0.5 * d**2
    return 0.5 * (max(0.0, 1 - d) if hinge else (1 - d)) ** 2


def _probs_and_mask(shape=(3, 2, 17, 13), seed=0):
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal(shape) * 2
    e = np.exp(logits - logits.max(1, keepdims=True))
    probs = e / e.sum(1, keepdims=True)
    mask = (rng.random((shape[0],) + shape[2:]) > 0.7).astype(np.float64)
    return probs, mask


# ----------------------------------------------------------------------------- focal
@pytest.mark.parametrize("gamma,smooth", [(2.0, 1e-5), (0.0, 1e-5), (1.5, 0.01)])
def test_focal_matches_numpy(gamma, smooth):
    probs, mask = _probs_and_mask()
    got = focal_loss(torch.from_numpy(probs), torch.from_numpy(mask), gamma=gamma, smooth=smooth)
    assert got.dim() == 0
    np.testing.assert_allclose(got.item(), np_focal(probs, mask, gamma, smooth), rtol=1e-12, atol=0)


def test_focal_float32_and_mask_with_channel_axis():
    probs, mask = _probs_and_mask(shape=(2, 2, 64, 64), seed=1)
    want = np_focal(probs, mask)
    got = focal_loss(torch.from_numpy(probs).float(), torch.from_numpy(mask).float()[:, None])
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.item(), want, rtol=1e-6, atol=0)


def test_focal_three_classes():
    rng = np.random.default_rng(2)
    p = rng.random((2, 3, 5, 4))
    p /= p.sum(1, keepdims=True)
    t = rng.integers(0, 3, (2, 5, 4))
    got = focal_loss(torch.from_numpy(p), torch.from_numpy(t))
    np.testing.assert_allclose(got.item(), np_focal(p, t), rtol=1e-12, atol=0)


def test_focal_gradient():
    probs, mask = _probs_and_mask(shape=(1, 2, 4, 3), seed=3)
    x = torch.from_numpy(probs).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p: focal_loss(p, torch.from_numpy(mask)), (x,))


def test_focal_shape_mismatch():
    with pytest.raises(ValueError):
        focal_loss(torch.rand(2, 2, 4, 4), torch.zeros(2, 4, 5))


# ----------------------------------------------------------------------------- dice
def test_dice_matches_numpy():
    probs, mask = _probs_and_mask(seed=4)
    for pred, tgt in ((probs[:, 1], mask), (probs[:, 0], 1 - mask)):
        got = dice_loss(torch.from_numpy(pred), torch.from_numpy(tgt))
        np.testing.assert_allclose(got.item(), np_dice(pred, tgt), rtol=1e-12, atol=0)
    got32 = dice_loss(torch.from_numpy(probs[:, 1]).float(), torch.from_numpy(mask).float())
    np.testing.assert_allclose(got32.item(), np_dice(probs[:, 1], mask), rtol=1e-6, atol=0)


def test_dice_empty_mask_and_perfect_prediction():
    z = torch.zeros(2, 5, 5, dtype=torch.float64)
    assert dice_loss(z, z).item() == 0.0  # (0 + 1) / (0 + 0 + 1) = 1
    m = (torch.rand(2, 5, 5, generator=torch.Generator().manual_seed(0)) > 0.5).double()
    np.testing.assert_allclose(dice_loss(m, m).item(), np_dice(m.numpy(), m.numpy()), rtol=1e-12)
    np.testing.assert_allclose(dice_loss(z, m).item(), np_dice(z.numpy(), m.numpy()), rtol=1e-12)


def test_dice_gradient():
    pred = torch.rand(2, 3, 3, dtype=torch.float64, requires_grad=True)
    tgt = (torch.rand(2, 3, 3, dtype=torch.float64) > 0.5).double()
    assert torch.autograd.gradcheck(lambda p: dice_loss(p, tgt), (pred,))


# ----------------------------------------------------------------------------- pairwise
LOGITS = np.array([[0.1, 0.30], [0.2, 0.95], [0.0, 2.70], [0.4, -0.05]])


@pytest.mark.parametrize("hinge", [False, True])
@pytest.mark.parametrize("pair", [(0, 1), (1, 0), (0, 2), (2, 3), (0, 3), (3, 1)])
def test_pairwise_formula_on_forced_pairs(monkeypatch, pair, hinge):
    labels = np.array([0, 1, 0, 0])
    monkeypatch.setattr(losses, "_pick_pair", lambda b, g, p: pair)
    got = pairwise_loss(torch.from_numpy(LOGITS), torch.from_numpy(labels), hinge=hinge)
    np.testing.assert_allclose(got.item(), np_pair(LOGITS, labels, *pair, hinge=hinge), rtol=1e-12, atol=1e-15)


def test_pairwise_faithful_vs_hinge_when_gap_exceeds_one(monkeypatch):
    labels = torch.tensor([0, 1, 0, 0])
    monkeypatch.setattr(losses, "_pick_pair", lambda b, g, p: (0, 2))  # d = |0.30 - 2.70| = 2.4
    same = pairwise_loss(torch.from_numpy(LOGITS), labels)  # labels 0 and 0
    np.testing.assert_allclose(same.item(), 0.5 * 2.4**2, rtol=1e-12)
    labels = torch.tensor([0, 1, 1, 0])
    faithful = pairwise_loss(torch.from_numpy(LOGITS), labels)  # d = 2.4 > 1
    hinged = pairwise_loss(torch.from_numpy(LOGITS), labels, hinge=True)
    np.testing.assert_allclose(faithful.item(), 0.5 * (1 - 2.4) ** 2, rtol=1e-12)
    assert hinged.item() == 0.0


def test_pairwise_branch_zero_pairs_first_sample_with_other():
    seen = set()
    for seed in range(60):
        g = torch.Generator().manual_seed(seed)
        i, j = losses._pick_pair(5, g, random_pair_prob=0.0)
        assert i == 0 and 1 <= j <= 4
        seen.add(j)
    assert seen == {1, 2, 3, 4}


def test_pairwise_branch_random_gives_distinct_pairs_not_only_from_zero():
    firsts = set()
    for seed in range(60):
        g = torch.Generator().manual_seed(seed)
        i, j = losses._pick_pair(5, g, random_pair_prob=1.0)
        assert i != j and 0 <= i < 5 and 0 <= j < 5
        firsts.add(i)
    assert firsts == {0, 1, 2, 3, 4}


def test_pairwise_branch_frequency():
    g = torch.Generator().manual_seed(123)
    n, random_like = 2000, 0
    for _ in range(n):
        i, _ = losses._pick_pair(50, g, random_pair_prob=0.2)
        random_like += i != 0
    # P(i != 0) = 0.2 * 49/50 = 0.196; 5 sigma ~ 0.044
    assert abs(random_like / n - 0.196) < 0.045


def test_pairwise_deterministic_two_samples_and_generator_reproducible():
    logits = torch.tensor([[0.0, 0.2], [0.0, 0.9]], dtype=torch.float64)
    for prob in (0.0, 1.0):  # with B = 2 both branches compare samples 0 and 1
        got = pairwise_loss(logits, torch.tensor([0, 1]), random_pair_prob=prob)
        np.testing.assert_allclose(got.item(), 0.5 * (1 - 0.7) ** 2, rtol=1e-12)
        got = pairwise_loss(logits, torch.tensor([1, 1]), random_pair_prob=prob)
        np.testing.assert_allclose(got.item(), 0.5 * 0.7**2, rtol=1e-12)
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = torch.randint(0, 2, (8,), generator=torch.Generator().manual_seed(1))
    a = [pairwise_loss(x, y, torch.Generator().manual_seed(s)).item() for s in range(5)]
    b = [pairwise_loss(x, y, torch.Generator().manual_seed(s)).item() for s in range(5)]
    assert a == b


def test_pairwise_small_batch_and_gradient():
    z = pairwise_loss(torch.randn(1, 2), torch.tensor([1]))
    assert z.dim() == 0 and z.item() == 0.0
    x = torch.tensor([[0.1, 0.3], [0.2, 0.5]], dtype=torch.float64, requires_grad=True)
    pairwise_loss(x, torch.tensor([0, 1]), random_pair_prob=0.0).backward()
    # d = 0.2, loss = 0.5 (1 - d)^2, dloss/dx01 = -(1 - d) * sign(x01 - x11) = 0.8
    np.testing.assert_allclose(x.grad.numpy(), [[0.0, 0.8], [0.0, -0.8]], rtol=1e-12)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_float32():
    probs, mask = _probs_and_mask(shape=(2, 2, 32, 32), seed=6)
    p, m = torch.from_numpy(probs).float().cuda(), torch.from_numpy(mask).float().cuda()
    np.testing.assert_allclose(focal_loss(p, m).item(), np_focal(probs, mask), rtol=1e-5)
    np.testing.assert_allclose(dice_loss(p[:, 1], m).item(), np_dice(probs[:, 1], mask), rtol=1e-5)
    logits = torch.from_numpy(LOGITS).float().cuda()
    got = pairwise_loss(logits, torch.tensor([0, 1, 0, 0], device="cuda"), random_pair_prob=0.0,
                        generator=torch.Generator().manual_seed(0))
    assert got.device.type == "cuda"
