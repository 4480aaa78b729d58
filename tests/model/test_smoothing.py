"""gaussian_smooth against scipy.ndimage.gaussian_filter (mode='reflect')."""

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from s2swclip.model.smoothing import gaussian_kernel1d, gaussian_smooth, reflect_indices


def _scipy_ref(maps: np.ndarray, sigma, truncate=4.0) -> np.ndarray:
    return np.stack([gaussian_filter(m, sigma=sigma, mode="reflect", truncate=truncate) for m in maps])


@pytest.mark.parametrize(
    "shape,sigma,truncate",
    [
        ((2, 518, 518), 4.0, 4.0),
        ((3, 37, 50), 4.0, 4.0),
        ((2, 5, 7), 4.0, 4.0),  # radius 16 > both sides: repeated reflection
        ((2, 1, 9), 4.0, 4.0),  # a single row
        ((2, 20, 13), 1.5, 3.0),
        ((1, 11, 12), 0.7, 4.0),
    ],
)
def test_matches_scipy_float32(shape, sigma, truncate):
    rng = np.random.default_rng(0)
    x = rng.random(shape, dtype=np.float64).astype(np.float32)
    got = gaussian_smooth(torch.from_numpy(x), sigma=sigma, truncate=truncate)
    want = _scipy_ref(x, sigma, truncate)
    assert got.dtype == torch.float32 and got.shape == x.shape
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("shape", [(2, 37, 50), (2, 5, 7), (1, 3, 40)])
def test_matches_scipy_float64_tight(shape):
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape)
    got = gaussian_smooth(torch.from_numpy(x), sigma=4.0).numpy()
    np.testing.assert_allclose(got, _scipy_ref(x, 4.0), rtol=0, atol=1e-12)


def test_integer_sigma_like_released_scripts():
    # the released test script passes sigma as an int (argparse type=int)
    rng = np.random.default_rng(2)
    x = rng.random((1, 30, 30))
    got = gaussian_smooth(torch.from_numpy(x), sigma=4).numpy()
    np.testing.assert_allclose(got, _scipy_ref(x, 4), rtol=0, atol=1e-12)


@pytest.mark.parametrize("sigma", [0, 0.0, None])
def test_no_smoothing(sigma):
    x = torch.rand(2, 9, 9)
    assert gaussian_smooth(x, sigma=sigma) is x
    if sigma is not None:
        np.testing.assert_array_equal(gaussian_filter(x[0].numpy(), sigma=sigma), x[0].numpy())


def test_negative_sigma_rejected():
    with pytest.raises(ValueError):
        gaussian_smooth(torch.rand(1, 4, 4), sigma=-1.0)


def test_images_are_independent():
    torch.manual_seed(0)
    x = torch.rand(3, 16, 16, dtype=torch.float64)
    y = x.clone()
    y[1] += torch.rand(16, 16, dtype=torch.float64)
    a, b = gaussian_smooth(x), gaussian_smooth(y)
    assert torch.equal(a[0], b[0]) and torch.equal(a[2], b[2])
    assert not torch.allclose(a[1], b[1])


def test_unbatched_and_extra_leading_axes():
    rng = np.random.default_rng(3)
    x = rng.random((2, 2, 12, 10))
    got = gaussian_smooth(torch.from_numpy(x), sigma=2.0).numpy()
    want = _scipy_ref(x.reshape(4, 12, 10), 2.0).reshape(x.shape)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    got2 = gaussian_smooth(torch.from_numpy(x[0, 0]), sigma=2.0).numpy()
    np.testing.assert_allclose(got2, want[0, 0], rtol=0, atol=1e-12)


def test_kernel_matches_scipy_and_is_cached():
    from scipy.ndimage._filters import _gaussian_kernel1d

    k = gaussian_kernel1d(4.0, 4.0, dtype=torch.float64)
    assert k.numel() == 33
    np.testing.assert_allclose(k.numpy(), _gaussian_kernel1d(4.0, 0, 16), rtol=0, atol=1e-15)
    assert gaussian_kernel1d(4.0, 4.0, dtype=torch.float64) is k
    assert gaussian_kernel1d(4.0, 4.0, dtype=torch.float32) is not k


@pytest.mark.parametrize("n,left,right", [(4, 3, 3), (3, 10, 7), (1, 5, 5), (5, 0, 0)])
def test_reflect_indices_match_numpy_symmetric(n, left, right):
    # numpy's 'symmetric' pad == scipy 'reflect' (half-sample), including repeated reflection
    x = np.arange(n)
    want = np.pad(x, (left, right), mode="symmetric")
    np.testing.assert_array_equal(reflect_indices(n, left, right).numpy(), want)


def test_differentiable():
    x = torch.rand(1, 6, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: gaussian_smooth(t, sigma=1.0), (x,))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_float32_matches_scipy():
    rng = np.random.default_rng(5)
    x = rng.random((2, 518, 518)).astype(np.float32)
    got = gaussian_smooth(torch.from_numpy(x).cuda(), sigma=4.0)
    assert got.device.type == "cuda" and got.dtype == torch.float32
    np.testing.assert_allclose(got.cpu().numpy(), _scipy_ref(x, 4.0), rtol=0, atol=1e-6)
