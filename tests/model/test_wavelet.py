"""Torch wavelet transforms against PyWavelets (pywt.swt2 / pywt.dwt2), per image."""

import numpy as np
import pytest
import pywt
import torch

from s2swclip.model.wavelet import DWT_MODES, dwt2, dwt2_haar, spatial_to_wavelet, swt2_level1


def _pywt_swt2(x: np.ndarray, wavelet: str):
    bands = [pywt.swt2(img, wavelet, level=1)[0] for img in x]
    return [np.stack([b[0] for b in bands])] + [np.stack([b[1][i] for b in bands]) for i in range(3)]


def _pywt_dwt2(x: np.ndarray, wavelet: str, mode: str = "symmetric"):
    bands = [pywt.dwt2(img, wavelet, mode=mode) for img in x]
    return [np.stack([b[0] for b in bands])] + [np.stack([b[1][i] for b in bands]) for i in range(3)]


def _reference_w(x: np.ndarray, bilinear, w=(0.1, 0.9, 0.9, 0.1, 0.99, 0.01)) -> np.ndarray:
    """Straight transcription of ``docs/method.md`` §6.2: pywt per image, numpy bilinear resize.

    Odd sizes: the documented rule (pad ONE edge-replicated row/column for swt2, crop back).
    """
    swt_a, swt_d, dwt_a, dwt_d, dwt_mix, swt_mix = w
    out = []
    for img in x:
        n, c = img.shape
        padded = np.pad(img, ((0, n % 2), (0, c % 2)), mode="edge")
        A, (H, V, D) = pywt.swt2(padded, "sym2", level=1)[0]
        z = (A * swt_a + (H + V + D) * swt_d)[:n, :c]
        A2, (H2, V2, D2) = pywt.dwt2(img, "haar", mode="symmetric")
        low = A2 * dwt_a + np.mean(np.stack([H2, V2, D2], -1), -1) * dwt_d
        out.append(bilinear(low, n, c) * dwt_mix + z * swt_mix)
    return np.stack(out)


def _t(x):
    return torch.from_numpy(np.ascontiguousarray(x))


# ----------------------------------------------------------------------------- swt2
@pytest.mark.parametrize("wavelet", ["sym2", "haar", "db3"])
@pytest.mark.parametrize("shape", [(2, 10, 8), (3, 4, 6), (1, 2, 2), (2, 16, 22)])
def test_swt2_matches_pywt_float64(shape, wavelet):
    rng = np.random.default_rng(10)
    x = rng.standard_normal(shape)
    got = swt2_level1(_t(x), wavelet)
    for g, w in zip(got, _pywt_swt2(x, wavelet)):
        assert g.shape == w.shape
        np.testing.assert_allclose(g.numpy(), w, rtol=0, atol=1e-12)


@pytest.mark.parametrize("shape", [(2, 10, 8), (2, 1370, 768)])
def test_swt2_matches_pywt_float32(shape):
    rng = np.random.default_rng(11)
    x = rng.standard_normal(shape).astype(np.float32)
    got = swt2_level1(_t(x), "sym2")
    for g, w in zip(got, _pywt_swt2(x, "sym2")):
        assert g.dtype == torch.float32
        np.testing.assert_allclose(g.numpy(), w, rtol=0, atol=2e-6)


@pytest.mark.parametrize("shape", [(1, 5, 8), (1, 8, 5), (1, 7, 7)])
def test_swt2_rejects_odd_like_pywt(shape):
    x = np.zeros(shape)
    with pytest.raises(ValueError):
        pywt.swt2(x[0], "sym2", level=1)
    with pytest.raises(ValueError):
        swt2_level1(_t(x))


# ----------------------------------------------------------------------------- dwt2
@pytest.mark.parametrize("mode", DWT_MODES)
@pytest.mark.parametrize("wavelet", ["haar", "sym2"])
@pytest.mark.parametrize("shape", [(2, 10, 8), (2, 9, 7), (1, 3, 5), (2, 1, 6), (1, 2, 1)])
def test_dwt2_matches_pywt(shape, wavelet, mode):
    if mode == "reflect" and min(shape[1:]) < 2:
        pytest.skip("pywt refuses reflect on length-1 axes")
    rng = np.random.default_rng(12)
    x = rng.standard_normal(shape)
    got = dwt2(_t(x), wavelet, mode)
    for g, w in zip(got, _pywt_dwt2(x, wavelet, mode)):
        assert g.shape == w.shape
        np.testing.assert_allclose(g.numpy(), w, rtol=0, atol=1e-12)


@pytest.mark.parametrize("shape", [(2, 1370, 768), (2, 577, 767), (3, 11, 9)])
def test_dwt2_haar_float32_even_and_odd(shape):
    rng = np.random.default_rng(13)
    x = rng.standard_normal(shape).astype(np.float32)
    got = dwt2_haar(_t(x))
    want = _pywt_dwt2(x, "haar")
    assert got[0].shape == (shape[0], -(-shape[1] // 2), -(-shape[2] // 2))
    for g, w in zip(got, want):
        np.testing.assert_allclose(g.numpy(), w, rtol=0, atol=1e-6)


def test_dwt2_rejects_unknown_mode():
    with pytest.raises(ValueError):
        dwt2(torch.zeros(1, 4, 4), "haar", "smooth")


# ------------------------------------------------------------------- spatial_to_wavelet
def test_spatial_to_wavelet_float64_tight(np_bilinear):
    rng = np.random.default_rng(14)
    x = rng.standard_normal((2, 10, 8))
    got = spatial_to_wavelet(_t(x))
    np.testing.assert_allclose(got.numpy(), _reference_w(x, np_bilinear), rtol=0, atol=1e-12)


def test_spatial_to_wavelet_custom_weights(np_bilinear):
    rng = np.random.default_rng(15)
    x = rng.standard_normal((2, 12, 6))
    w = (0.3, 0.7, 0.6, 0.4, 0.9, 0.1)
    got = spatial_to_wavelet(_t(x), *w)
    np.testing.assert_allclose(got.numpy(), _reference_w(x, np_bilinear, w), rtol=0, atol=1e-12)


def test_spatial_to_wavelet_realistic_float32(np_bilinear):
    # ViT-L/14 at 518 px: N = 37*37 + 1 = 1370 tokens, C = 768; normalised rows like the pipeline
    rng = np.random.default_rng(16)
    x = rng.standard_normal((2, 1370, 768)).astype(np.float32)
    x /= np.linalg.norm(x, axis=-1, keepdims=True)
    got = spatial_to_wavelet(_t(x))
    assert got.shape == x.shape and got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), _reference_w(x, np_bilinear), rtol=0, atol=1e-6)


@pytest.mark.parametrize("shape", [(2, 11, 8), (2, 10, 9), (2, 9, 7), (1, 577, 16), (1, 1, 1)])
def test_spatial_to_wavelet_odd_sizes(shape, np_bilinear):
    rng = np.random.default_rng(17)
    x = rng.standard_normal(shape)
    got = spatial_to_wavelet(_t(x))
    assert got.shape == shape
    np.testing.assert_allclose(got.numpy(), _reference_w(x, np_bilinear), rtol=0, atol=1e-12)


def test_spatial_to_wavelet_leading_axes_and_batch_independence():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 10, 8, dtype=torch.float64)
    got = spatial_to_wavelet(x)
    flat = spatial_to_wavelet(x.reshape(6, 10, 8)).reshape(2, 3, 10, 8)
    assert torch.equal(got, flat)
    single = spatial_to_wavelet(x[1, 2:3])
    torch.testing.assert_close(got[1, 2:3], single, rtol=0, atol=1e-14)


def test_spatial_to_wavelet_differentiable():
    x = torch.randn(1, 6, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(spatial_to_wavelet, (x,))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_float32_matches_pywt(np_bilinear):
    rng = np.random.default_rng(18)
    x = rng.standard_normal((2, 1370, 768)).astype(np.float32)
    x /= np.linalg.norm(x, axis=-1, keepdims=True)
    xc = torch.from_numpy(x).cuda()
    for g, w in zip(swt2_level1(xc), _pywt_swt2(x, "sym2")):
        assert g.device.type == "cuda"
        np.testing.assert_allclose(g.cpu().numpy(), w, rtol=0, atol=1e-6)
    for g, w in zip(dwt2_haar(xc), _pywt_dwt2(x, "haar")):
        np.testing.assert_allclose(g.cpu().numpy(), w, rtol=0, atol=1e-6)
    got = spatial_to_wavelet(xc)
    np.testing.assert_allclose(got.cpu().numpy(), _reference_w(x, np_bilinear), rtol=0, atol=1e-6)
