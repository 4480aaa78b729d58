"""Hierarchical multi-scale fusion against a NumPy transcription."""

import numpy as np
import pytest
import torch

from s2swclip.model.multiscale import enrich_features, hierarchical_multiscale


# ----------------------------------------------------------------------------- references
def np_linear_ac(x, out, axis):
    """Linear resize with align_corners=True: sample i at position i*(L_in-1)/(L_out-1)."""
    x = np.moveaxis(x, axis, -1)
    n = x.shape[-1]
    pos = np.arange(out) * ((n - 1) / (out - 1)) if out > 1 else np.zeros(1)
    flat = x.reshape(-1, n)
    res = np.stack([np.interp(pos, np.arange(n), row) for row in flat]).reshape(*x.shape[:-1], out)
    return np.moveaxis(res, -1, axis)


def np_adaptive(x, out, axis, reduce):
    """Adaptive pooling bins [floor(i*L/out), ceil((i+1)*L/out))."""
    x = np.moveaxis(x, axis, -1)
    n = x.shape[-1]
    cols = []
    for i in range(out):
        s, e = (i * n) // out, -(-((i + 1) * n) // out)
        cols.append(reduce(x[..., s:e], axis=-1))
    return np.moveaxis(np.stack(cols, -1), -1, axis)


def np_softmax(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def np_h(f, p=384, wu=0.01, wp=0.99):
    b, n, c = f.shape
    up = np_linear_ac(f, int(np.floor(1.5 * n)), axis=1)[:, :n]
    a = np_adaptive(f, p, 1, np.mean)
    m = np_adaptive(f, p, 1, np.max)
    cc = np_adaptive(np.concatenate([a, m], axis=2), c, 2, np.max)
    att = a + m
    w = np_softmax(att.mean(axis=1, keepdims=True), axis=2)
    g = w * a + (1 - w) * m
    s = 1 / (1 + np.exp(-(g + att + cc)))
    return wu * up + wp * np_linear_ac(s, n, axis=1)


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


# ----------------------------------------------------------------------------- tests
@pytest.mark.parametrize(
    "n,c,p",
    [
        (1370, 16, 384),  # ViT-L at 518 px: N > P
        (577, 12, 384),  # odd token count (336 px)
        (50, 8, 384),  # N < P: adaptive pooling upsamples
        (10, 9, 7),  # odd C, small P
        (2, 4, 3),
    ],
)
def test_matches_numpy_float64(n, c, p):
    rng = np.random.default_rng(n + c)
    f = _unit(rng.standard_normal((2, n, c)))
    got = hierarchical_multiscale(torch.from_numpy(f), pooled_tokens=p)
    assert got.shape == f.shape
    np.testing.assert_allclose(got.numpy(), np_h(f, p), rtol=0, atol=1e-12)


def test_custom_weights():
    rng = np.random.default_rng(1)
    f = rng.standard_normal((1, 40, 6))
    got = hierarchical_multiscale(torch.from_numpy(f), pooled_tokens=16, up_weight=0.3, pooled_weight=0.5)
    np.testing.assert_allclose(got.numpy(), np_h(f, 16, 0.3, 0.5), rtol=0, atol=1e-12)


def test_float32_realistic():
    rng = np.random.default_rng(2)
    f = _unit(rng.standard_normal((2, 1370, 768))).astype(np.float32)
    got = hierarchical_multiscale(torch.from_numpy(f))
    assert got.dtype == torch.float32
    # torch's linear interpolation computes sample positions i*(L_in-1)/(L_out-1) in float32
    # (~1e-4 relative at i ~ 2000), which moves values by up to ~2e-6; float64 above is exact
    np.testing.assert_allclose(got.numpy(), np_h(f.astype(np.float64)), rtol=0, atol=5e-6)


def test_pooled_tokens_not_tied_to_channels():
    # with C = 512 the pooled path still uses 384 tokens (not C/2 = 256)
    rng = np.random.default_rng(3)
    f = _unit(rng.standard_normal((1, 401, 512)))
    got = hierarchical_multiscale(torch.from_numpy(f)).numpy()
    np.testing.assert_allclose(got, np_h(f, 384), rtol=0, atol=1e-12)
    assert np.abs(got - np_h(f, 256)).max() > 1e-6


def test_enrich_features():
    rng = np.random.default_rng(4)
    f = _unit(rng.standard_normal((2, 65, 10)))
    want = 0.2 * np_h(f, 384) + 0.8 * f
    want = want / np.linalg.norm(want, axis=-1, keepdims=True)
    got = enrich_features(torch.from_numpy(f))
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(got.numpy(), axis=-1), 1.0, rtol=0, atol=1e-12)
    want2 = 0.5 * np_h(f, 20) + 0.5 * f
    want2 = want2 / np.linalg.norm(want2, axis=-1, keepdims=True)
    got2 = enrich_features(torch.from_numpy(f), weight=0.5, pooled_tokens=20)
    np.testing.assert_allclose(got2.numpy(), want2, rtol=0, atol=1e-12)


def test_batch_independent_and_rejects_2d():
    torch.manual_seed(0)
    x = torch.randn(3, 30, 8, dtype=torch.float64)
    full = hierarchical_multiscale(x, pooled_tokens=12)
    one = hierarchical_multiscale(x[1:2], pooled_tokens=12)
    torch.testing.assert_close(full[1:2], one, rtol=0, atol=1e-15)
    with pytest.raises(ValueError):
        hierarchical_multiscale(x[0])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_float32():
    rng = np.random.default_rng(5)
    f = _unit(rng.standard_normal((2, 1370, 768))).astype(np.float32)
    got = enrich_features(torch.from_numpy(f).cuda())
    assert got.device.type == "cuda" and got.dtype == torch.float32
    want = 0.2 * np_h(f.astype(np.float64)) + 0.8 * f
    want = want / np.linalg.norm(want, axis=-1, keepdims=True)
    np.testing.assert_allclose(got.cpu().numpy(), want, rtol=0, atol=5e-6)
