"""Entropy-gain similarity and map helpers against a NumPy transcription."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from s2swclip.model.similarity import (
    anomaly_map,
    entropy_gain_similarity,
    probs_to_maps,
    renyi_entropy,
    shannon_entropy,
)


# ----------------------------------------------------------------------------- references
def np_softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def np_shannon(x):
    p = np_softmax(x)
    return -np.sum(p * np.log(p + 1e-10), axis=-1)


def np_renyi(x):
    p = np_softmax(x)
    return 2.0 * np.log(np.sum(np.sqrt(p) + 1e-10, axis=-1))


def np_similarity(f, t, tr, temp=0.07):
    # literal transcription including the [B,N,K,C] product the released code forms
    dot = (f[:, :, None, :] * t[None, None, :, :]).sum(-1)
    gh = 1 - np.abs(np_shannon(f)[..., None] - np_shannon(t)[None, None, :])
    gr = 1 - np.abs(np_renyi(f)[..., None] - np_renyi(tr)[None, None, :])
    return np_softmax(dot * gh * gr / temp)


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _case(b=2, n=50, k=2, c=64, seed=0, scale=None):
    rng = np.random.default_rng(seed)
    f = rng.standard_normal((b, n, c))
    t = rng.standard_normal((k, c))
    tr = rng.standard_normal((k, c))
    if scale is None:  # the pipeline's normalised features
        return _unit(f), _unit(t), _unit(tr)
    return f * scale, t * scale, tr * scale


# ----------------------------------------------------------------------------- entropies
@pytest.mark.parametrize("scale", [None, 1.0, 5.0])
def test_entropies_match_numpy(scale):
    f, _, _ = _case(seed=1, scale=scale)
    x = torch.from_numpy(f)
    np.testing.assert_allclose(shannon_entropy(x).numpy(), np_shannon(f), rtol=0, atol=1e-12)
    np.testing.assert_allclose(renyi_entropy(x).numpy(), np_renyi(f), rtol=0, atol=1e-12)
    x32 = x.float()
    np.testing.assert_allclose(shannon_entropy(x32).numpy(), np_shannon(f), rtol=0, atol=2e-6)
    np.testing.assert_allclose(renyi_entropy(x32).numpy(), np_renyi(f), rtol=0, atol=2e-6)


def test_renyi_eps_inside_every_term():
    # one-hot-like softmax: sum sqrt(p) ~ 1, the C*1e-10 term is visible in float64
    x = torch.zeros(1, 1000, dtype=torch.float64)
    x[0, 0] = 1000.0
    want = 2.0 * np.log(1.0 + 1000 * 1e-10)
    assert abs(renyi_entropy(x).item() - want) < 1e-15
    assert abs(want - 2.0 * np.log(1.0 + 1e-10)) > 1e-7  # eps once would differ


def test_renyi_general_alpha():
    rng = np.random.default_rng(2)
    f = rng.standard_normal((3, 7))
    p = np_softmax(f)
    want = np.log(np.sum(p**2.0 + 1e-10, -1)) / (1 - 2.0)
    np.testing.assert_allclose(renyi_entropy(torch.from_numpy(f), alpha=2.0).numpy(), want, rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------- similarity
@pytest.mark.parametrize("scale", [None, 0.3, 2.0])
@pytest.mark.parametrize("k", [2, 3])
def test_similarity_matches_numpy_float64(scale, k):
    f, t, tr = _case(k=k, seed=3, scale=scale)
    got = entropy_gain_similarity(*map(torch.from_numpy, (f, t, tr)))
    want = np_similarity(f, t, tr)
    assert got.shape == (2, 50, k)
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-12)


def test_similarity_float32_realistic():
    f, t, tr = _case(b=2, n=1370, c=768, seed=4)
    got = entropy_gain_similarity(*(torch.from_numpy(a).float() for a in (f, t, tr)))
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), np_similarity(f, t, tr), rtol=0, atol=2e-6)


def test_similarity_temperature_and_promotion():
    f, t, tr = _case(seed=5)
    got = entropy_gain_similarity(torch.from_numpy(f).float(), torch.from_numpy(t), torch.from_numpy(tr), 0.5)
    assert got.dtype == torch.float64  # float32 features x float64 text -> float64, like the released code
    want = np_similarity(f.astype(np.float32).astype(np.float64), t, tr, temp=0.5)
    # the features' entropies stay float32 (released-code precision), the rest is float64
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-6)
    same = entropy_gain_similarity(*(torch.from_numpy(a) for a in (f, t, tr)), temperature=0.5)
    np.testing.assert_allclose(same.numpy(), np_similarity(f, t, tr, temp=0.5), rtol=0, atol=1e-12)


class _MaxNumel(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.max_numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                self.max_numel = max(self.max_numel, leaf.numel())
        return out


def test_similarity_never_forms_bnkc_tensor():
    b, n, k, c = 2, 30, 2, 64
    f, t, tr = _case(b=b, n=n, k=k, c=c, seed=6)
    ft, tt, trt = (torch.from_numpy(a).requires_grad_(True) for a in (f, t, tr))
    with _MaxNumel() as mode:
        out = entropy_gain_similarity(ft, tt, trt)
        out[..., 1].sum().backward()
    assert mode.max_numel <= b * n * c  # the input itself; a [B,N,K,C] product would be K times that
    # the check can fail: the naive broadcast product trips it
    with _MaxNumel() as naive:
        (ft.detach()[:, :, None, :] * tt.detach()[None, None]).sum(-1)
    assert naive.max_numel == b * n * k * c


def test_similarity_gradcheck_through_text():
    f, t, tr = _case(b=1, n=5, c=8, seed=7, scale=1.0)
    ft = torch.from_numpy(f)
    tt = torch.from_numpy(t).requires_grad_(True)
    trt = torch.from_numpy(tr).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: entropy_gain_similarity(ft, a, b), (tt, trt))


def test_similarity_rejects_bad_shapes():
    with pytest.raises(ValueError):
        entropy_gain_similarity(torch.zeros(1, 5, 8), torch.zeros(2, 7), torch.zeros(2, 7))


# ----------------------------------------------------------------------------- maps
@pytest.mark.parametrize("g,s", [(5, 37), (4, 16), (37, 518), (6, 4)])
def test_probs_to_maps_matches_numpy_bilinear(g, s, np_bilinear):
    rng = np.random.default_rng(8)
    probs = rng.random((2, g * g + 1, 2))
    got = probs_to_maps(torch.from_numpy(probs), s)
    grid = probs[:, 1:, :].reshape(2, g, g, 2).transpose(0, 3, 1, 2)  # row-major tokens
    assert got.shape == (2, 2, s, s)
    np.testing.assert_allclose(got.numpy(), np_bilinear(grid, s, s), rtol=0, atol=1e-12)
    # float32: torch computes the sample positions (i + 0.5) * in/out - 0.5 in float32 itself,
    # so the weights carry ~1e-5 relative position error at S = 518 (the released code shares it)
    got32 = probs_to_maps(torch.from_numpy(probs).float(), s)
    np.testing.assert_allclose(got32.numpy(), np_bilinear(grid, s, s), rtol=0, atol=1e-5)


def test_probs_to_maps_token_order_and_class_token_dropped():
    g = 3
    probs = torch.zeros(1, g * g + 1, 1)
    probs[0, 0, 0] = 100.0  # class token: must not appear
    probs[0, 1 + 1 * g + 2, 0] = 1.0  # token at row 1, column 2
    out = probs_to_maps(probs, g)  # same size: identity resize
    want = torch.zeros(1, 1, g, g)
    want[0, 0, 1, 2] = 1.0
    assert torch.equal(out, want)


def test_probs_to_maps_rectangular_size_and_errors():
    probs = torch.rand(1, 17, 2)
    assert probs_to_maps(probs, (8, 12)).shape == (1, 2, 8, 12)
    with pytest.raises(ValueError):
        probs_to_maps(torch.rand(1, 16, 2), 8)  # 15 patch tokens: not a square


def test_probs_to_maps_equals_released_reshape_path():
    # released: reshape(B, G, G, K).permute(0, 3, 1, 2) then F.interpolate(..., mode="bilinear")
    probs = torch.rand(2, 26, 2)
    ref = F.interpolate(probs[:, 1:].reshape(2, 5, 5, 2).permute(0, 3, 1, 2), 21, mode="bilinear")
    torch.testing.assert_close(probs_to_maps(probs, 21), ref, rtol=0, atol=0)


@pytest.mark.parametrize("shape", [(3, 2, 7, 7), (4, 2, 11), (2, 2)])
def test_anomaly_map(shape):
    rng = np.random.default_rng(9)
    p = rng.random(shape)
    got = anomaly_map(torch.from_numpy(p)).numpy()
    np.testing.assert_allclose(got, (p[:, 1] + 1 - p[:, 0]) / 2, rtol=0, atol=1e-15)
    with pytest.raises(ValueError):
        anomaly_map(torch.zeros(2, 3, 4))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_float32(np_bilinear):
    f, t, tr = _case(b=2, n=1370, c=768, seed=10)
    got = entropy_gain_similarity(*(torch.from_numpy(a).float().cuda() for a in (f, t, tr)))
    assert got.device.type == "cuda" and got.dtype == torch.float32
    np.testing.assert_allclose(got.cpu().numpy(), np_similarity(f, t, tr), rtol=0, atol=2e-6)
    maps = probs_to_maps(got, 518)
    grid = np_similarity(f, t, tr)[:, 1:].reshape(2, 37, 37, 2).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(maps.cpu().numpy(), np_bilinear(grid, 518, 518), rtol=0, atol=1e-5)
