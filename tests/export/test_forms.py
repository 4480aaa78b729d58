"""The portable (export-friendly) forms compute what PyTorch's operators and the eager model compute."""

import numpy as np
import pytest
import pywt
import scipy.ndimage
import torch
import torch.nn.functional as F

from s2swclip.model.multiscale import hierarchical_multiscale
from s2swclip.model.portable import (adaptive_pool, gather_windows, linear_resample, portable, portable_forms,
                                     window_index)
from s2swclip.model.smoothing import gaussian_smooth
from s2swclip.model.wavelet import dwt2, spatial_to_wavelet, swt2_level1
from helpers import assert_close_rounding, make_images


@pytest.mark.parametrize("n_in,n_out", [(1370, 2055), (384, 1370), (401, 384), (37, 518), (100, 40), (7, 7),
                                        (5, 1), (1, 6)])
def test_linear_resample_equals_interpolate(n_in, n_out):
    g = torch.Generator().manual_seed(n_in)
    x64 = torch.randn(2, 5, n_in, generator=g, dtype=torch.float64)
    want64 = F.interpolate(x64, size=n_out, mode="linear", align_corners=True)
    torch.testing.assert_close(linear_resample(x64, n_out), want64, rtol=0, atol=1e-14)
    x = x64.float()
    want = F.interpolate(x, size=n_out, mode="linear", align_corners=True)
    got = linear_resample(x, n_out)
    assert got.dtype == torch.float32
    # the same float32 positions and weights; a fused multiply-add in PyTorch's kernel may round
    # the output once differently
    torch.testing.assert_close(got, want, rtol=0, atol=float(x.abs().max()) * 2.4e-7)


def test_linear_resample_keep_is_a_prefix():
    x = torch.randn(1, 3, 1370)
    full = F.interpolate(x, scale_factor=1.5, mode="linear", align_corners=True)
    got = linear_resample(x, 2055, keep=1370)
    assert got.shape == (1, 3, 1370)
    torch.testing.assert_close(got, full[..., :1370], rtol=0, atol=1e-6)


@pytest.mark.parametrize("n,p", [(1370, 384), (401, 384), (577, 384), (50, 384), (10, 7), (2, 3), (1536, 768), (9, 9)])
def test_adaptive_pool_equals_pytorch(n, p):
    x = torch.randn(2, 4, n, generator=torch.Generator().manual_seed(n))
    # max selects one member: no rounding, so the two forms agree bit for bit
    assert torch.equal(adaptive_pool(x, p, "max"), F.adaptive_max_pool1d(x, p))
    # mean: a sum of at most ceil(n / p) + 1 members, then a division, computed by two different
    # forms: equal to the rounding of that sum (summation order is the kernel's business)
    width = -(-n // p) + 1
    for dtype in (torch.float32, torch.float64):
        xd = x.to(dtype)
        assert_close_rounding(adaptive_pool(xd, p, "mean"), F.adaptive_avg_pool1d(xd, p), n=width,
                              scale=float(xd.abs().max()))
    # a wrong bin (one member off) moves some output by far more than that tolerance
    shifted = adaptive_pool(torch.roll(x, 1, dims=-1), p, "mean")
    assert (shifted - F.adaptive_avg_pool1d(x, p)).abs().max() > 1e-3
    with pytest.raises(ValueError):
        adaptive_pool(x, p, "sum")


@pytest.mark.parametrize("m,size,step", [(20, 4, 1), (21, 4, 2), (9, 2, 2), (5, 5, 1)])
def test_windows_equal_unfold(m, size, step):
    idx = torch.randperm(m, generator=torch.Generator().manual_seed(m))
    assert torch.equal(window_index(idx, size, step), idx.unfold(0, size, step))
    x = torch.randn(3, 2, m)
    assert torch.equal(gather_windows(x, window_index(torch.arange(m), size, step)), x.unfold(-1, size, step))


def test_switch_is_scoped():
    assert not portable()
    with portable_forms():
        assert portable()
    assert not portable()


def test_multiscale_portable_equals_eager():
    f64 = torch.randn(2, 401, 48, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    f64 = f64 / f64.norm(dim=-1, keepdim=True)
    eager64 = hierarchical_multiscale(f64)
    with portable_forms():
        torch.testing.assert_close(hierarchical_multiscale(f64), eager64, rtol=0, atol=1e-12)
        got32 = hierarchical_multiscale(f64.float())
    torch.testing.assert_close(got32, hierarchical_multiscale(f64.float()), rtol=0, atol=1e-6)


def _filter_l1(wavelet):
    """sum |taps| of a wavelet's decomposition filters (PyWavelets' definition): the gain of one
    1-D filtering pass, so a 2-D (separable) band is bounded by max |x| times its square."""
    w = pywt.Wavelet(wavelet)
    return max(float(np.abs(w.dec_lo).sum()), float(np.abs(w.dec_hi).sum()))


def test_wavelet_portable_equals_eager():
    """Two different computations of each band (a gather + matmul for export, unfold + matmul in
    eager): equal to the rounding of a separable 2-D filter, never bit for bit (they differ in the
    last bits on AVX-512/AMX kernels)."""
    f = torch.randn(2, 401, 48, generator=torch.Generator().manual_seed(1))
    x = torch.randn(3, 11, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    eager = (spatial_to_wavelet(f), swt2_level1(f[:, :400]), [dwt2(x, "sym2", m) for m in ("zero", "reflect")])
    with portable_forms():
        port = (spatial_to_wavelet(f), swt2_level1(f[:, :400]), [dwt2(x, "sym2", m) for m in ("zero", "reflect")])
    # 4 x 4 taps of sym2 per output (the Haar branch has 2 x 2, then a bilinear mix of 4 values)
    taps = len(pywt.Wavelet("sym2").dec_lo) ** 2
    gain = _filter_l1("sym2") ** 2
    assert_close_rounding(port[0], eager[0], n=taps, scale=float(f.abs().max()) * gain)
    for a, b in zip(port[1], eager[1]):
        assert_close_rounding(a, b, n=taps, scale=float(f.abs().max()) * gain)
    for pa, pb in zip(port[2], eager[2]):
        for a, b in zip(pa, pb):
            assert_close_rounding(a, b, n=taps, scale=float(x.abs().max()) * gain)
    # the tolerance is far below what a real difference makes: one extension mode for the other
    assert (port[2][0][0] - eager[2][1][0]).abs().max() > 1e-2


@pytest.mark.parametrize("shape", [(2, 61, 47), (1, 9, 5)])
def test_smoothing_portable_matches_scipy(shape):
    x = torch.rand(shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    with portable_forms():
        got = gaussian_smooth(x, sigma=4.0)
    want = np.stack([scipy.ndimage.gaussian_filter(m, 4.0, mode="reflect", truncate=4.0) for m in x.numpy()])
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-12)


def test_predict_portable_equals_eager(tiny_detector):
    images = make_images(2, 280, seed=3)  # 401 tokens: more than the 384 pooled tokens
    eager = tiny_detector.predict(images)
    with portable_forms():
        port = tiny_detector.predict(images)
    torch.testing.assert_close(port.image_scores, eager.image_scores, rtol=0, atol=1e-6)
    torch.testing.assert_close(port.anomaly_maps, eager.anomaly_maps, rtol=0, atol=1e-5)


def test_tracing_does_not_poison_the_kernel_caches():
    """Kernels and taps made while torch.export traces are tracer values: they must not be cached."""

    class Smooth(torch.nn.Module):
        def forward(self, x):
            return gaussian_smooth(x, sigma=3.25) + spatial_to_wavelet(x)

    x = torch.rand(2, 12, 10)
    torch.export.export(Smooth(), (x,))
    got = Smooth()(x)  # eager, after the trace: real tensors only
    assert type(got) is torch.Tensor and got.shape == x.shape
    want = np.stack([scipy.ndimage.gaussian_filter(m, 3.25, mode="reflect") for m in x.numpy()])
    np.testing.assert_allclose(gaussian_smooth(x, sigma=3.25).numpy(), want, rtol=0, atol=1e-6)
