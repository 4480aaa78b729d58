"""adaptive_fusion against numpy.corrcoef + sklearn VarianceThreshold."""

import warnings

import numpy as np
import pytest
import torch
from sklearn.feature_selection import VarianceThreshold

from s2swclip.model.fusion import adaptive_fusion


def _reference(generic, contrastive, referenced, threshold=0.1):
    """Row-by-row transcription with NumPy / scikit-learn (both-rows fallback when sklearn raises)."""
    rows = []
    for a, b, r in zip(generic, contrastive, referenced):
        rho = np.corrcoef(a, b)[0, 1]
        try:
            kept = VarianceThreshold(threshold=threshold).fit_transform(np.vstack([a, b]).T).T
        except ValueError:
            kept = np.vstack([a, b])
        rows.append(rho * np.mean(kept, axis=0) + r)
    return np.vstack(rows)


def _inputs(scales_g, scales_c, c=768, seed=0, dtype=np.float64):
    """Random [2, C] inputs; per-row scales control the variance (var ~ scale**2)."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((2, c))
    g = (base + 0.5 * rng.standard_normal((2, c)) + 0.3) * np.asarray(scales_g)[:, None]
    con = (base + 0.8 * rng.standard_normal((2, c)) - 0.2) * np.asarray(scales_c)[:, None]
    ref = rng.standard_normal((2, c)) * 0.7
    return g.astype(dtype), con.astype(dtype), ref.astype(dtype)


def _kept(x, threshold=0.1):
    return x.var(axis=-1) > threshold


CASES = {
    # (scales generic rows, scales contrastive rows): variance of a row ~ scale**2 * ~1.3
    "both_pass": ([1.0, 2.0], [1.0, 0.8]),
    "only_generic": ([1.0, 1.5], [0.05, 0.1]),
    "only_contrastive": ([0.1, 0.05], [1.0, 3.0]),
    "mixed_rows": ([1.0, 0.1], [0.1, 1.0]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_matches_numpy_sklearn_float64(case):
    g, c, r = _inputs(*CASES[case], seed=list(CASES).index(case))
    kept_g, kept_c = _kept(g), _kept(c)
    if case == "both_pass":
        assert kept_g.all() and kept_c.all()
    elif case == "only_generic":
        assert kept_g.all() and not kept_c.any()
    elif case == "only_contrastive":
        assert not kept_g.any() and kept_c.all()
    else:
        assert list(kept_g) == [True, False] and list(kept_c) == [False, True]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning when something passes
        got = adaptive_fusion(torch.from_numpy(g), torch.from_numpy(c), torch.from_numpy(r))
    assert got.dtype == torch.float64 and got.shape == (2, 768)
    np.testing.assert_allclose(got.numpy(), _reference(g, c, r), rtol=0, atol=1e-12)


def test_none_pass_warns_and_averages_both():
    g, c, r = _inputs([0.1, 1.0], [0.05, 1.0], seed=5)
    assert not _kept(g)[0] and not _kept(c)[0] and _kept(g)[1]
    with pytest.raises(ValueError):  # what the released code would do
        VarianceThreshold(threshold=0.1).fit_transform(np.vstack([g[0], c[0]]).T)
    with pytest.warns(UserWarning, match=r"row\(s\) \[0\]"):
        got = adaptive_fusion(torch.from_numpy(g), torch.from_numpy(c), torch.from_numpy(r))
    rho0 = np.corrcoef(g[0], c[0])[0, 1]
    np.testing.assert_allclose(got[0].numpy(), rho0 * (g[0] + c[0]) / 2 + r[0], rtol=0, atol=1e-12)
    np.testing.assert_allclose(got.numpy(), _reference(g, c, r), rtol=0, atol=1e-12)


def test_threshold_is_strict():
    # population variance exactly 0.25 for the generic rows: with threshold 0.25 they are dropped
    c_dim = 16
    g = np.tile(np.array([0.5, -0.5]), (2, c_dim // 2))
    assert np.all(g.var(axis=-1) == 0.25)
    rng = np.random.default_rng(7)
    c = rng.standard_normal((2, c_dim)) * 2
    r = rng.standard_normal((2, c_dim))
    got = adaptive_fusion(torch.from_numpy(g), torch.from_numpy(c), torch.from_numpy(r), variance_threshold=0.25)
    want = _reference(g, c, r, threshold=0.25)
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-12)
    rho = np.array([np.corrcoef(g[i], c[i])[0, 1] for i in range(2)])
    np.testing.assert_allclose(got.numpy(), rho[:, None] * c + r, rtol=0, atol=1e-12)


@pytest.mark.parametrize("case", ["both_pass", "mixed_rows"])
def test_float32_like_released_code(case):
    # the released code feeds float32 arrays to numpy/sklearn
    g, c, r = _inputs(*CASES[case], seed=11, dtype=np.float32)
    got = adaptive_fusion(torch.from_numpy(g), torch.from_numpy(c), torch.from_numpy(r))
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), _reference(g, c, r), rtol=0, atol=1e-6)


def test_realistic_text_scale_and_other_c():
    # CLIP text features have per-row std ~0.4-0.6 (var ~0.2-0.3); C = 512 for ViT-B
    rng = np.random.default_rng(3)
    g, c, r = (rng.standard_normal((3, 2, 512)) * np.array([0.5, 0.3, 0.45])[:, None, None])
    got = adaptive_fusion(torch.from_numpy(g), torch.from_numpy(c), torch.from_numpy(r))
    np.testing.assert_allclose(got.numpy(), _reference(g, c, r), rtol=0, atol=1e-12)


def test_negative_correlation_and_custom_threshold():
    rng = np.random.default_rng(4)
    g = rng.standard_normal((2, 64))
    c = -g + 0.3 * rng.standard_normal((2, 64))
    r = rng.standard_normal((2, 64))
    for thr in (0.0, 0.5):
        got = adaptive_fusion(torch.from_numpy(g), torch.from_numpy(c), torch.from_numpy(r), thr)
        np.testing.assert_allclose(got.numpy(), _reference(g, c, r, thr), rtol=0, atol=1e-12)
    assert (np.array([np.corrcoef(g[i], c[i])[0, 1] for i in range(2)]) < -0.9).all()


def test_shape_mismatch_rejected():
    with pytest.raises(ValueError):
        adaptive_fusion(torch.zeros(2, 8), torch.zeros(2, 7), torch.zeros(2, 8))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_float32():
    g, c, r = _inputs(*CASES["mixed_rows"], seed=12, dtype=np.float32)
    got = adaptive_fusion(*(torch.from_numpy(a).cuda() for a in (g, c, r)))
    assert got.device.type == "cuda" and got.dtype == torch.float32
    np.testing.assert_allclose(got.cpu().numpy(), _reference(g, c, r), rtol=0, atol=1e-6)
