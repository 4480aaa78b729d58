"""AUPRO against plain transcriptions of its two definitions.

* exact: every distinct threshold t, pixels with score >= t are positive; FPR over all negative
  pixels, PRO = mean over all connected components (8-connectivity, per image) of the covered
  fraction; curve from (0, 0), trapezoid up to max_fpr with the point at max_fpr interpolated,
  divided by max_fpr (the MVTec AD evaluation).
* grid200: the released S2SW code's loop as it ran under NumPy 1.x -- thresholds
  np.arange(min, max, (max-min)/200) with a float64 step, score > t compared in the maps'
  precision, PRO averaged over all regions, FPR < max_fpr kept and min-max rescaled,
  sklearn.metrics.auc.
"""

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import auc

from s2swclip.errors import S2SWError
from s2swclip.eval.metrics import UndefinedMetricError, inputs, pro
from s2swclip.metrics import aupro

EIGHT = np.ones((3, 3), dtype=int)

# test_grid200_value_computed_under_numpy1: the released loop run under NumPy 1.26.4
NUMPY1_VALUE = 0.6612845273869914


def plain_exact(masks, maps, max_fpr=0.3):
    masks = np.asarray(masks, dtype=bool)
    regions = []
    for i, m in enumerate(masks):
        lab, n = ndimage.label(m, structure=EIGHT)
        for r in range(1, n + 1):
            regions.append((i, lab == r))
    negative = ~masks
    n_neg = negative.sum()
    points = [(0.0, 0.0)]
    for t in sorted(set(maps.ravel().tolist()), reverse=True):
        positive = maps >= t
        fpr = (positive & negative).sum() / n_neg
        pro = np.mean([(positive[i] & reg).sum() / reg.sum() for i, reg in regions])
        points.append((fpr, pro))
    area = 0.0
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x1 <= max_fpr:
            area += (x1 - x0) * (y0 + y1) / 2
        else:
            if x0 < max_fpr:
                y = y0 + (y1 - y0) * (max_fpr - x0) / (x1 - x0)
                area += (max_fpr - x0) * (y0 + y) / 2
            break
    return area / max_fpr


def released_loop(masks, maps, max_step=200, expect_fpr=0.3, numpy1=True):
    """The released code's grid200 loop (cal_pro_score), with the arithmetic of NumPy 1.x.

    The released lines are ``min_th, max_th = maps.min(), maps.max()``, ``delta = (max_th -
    min_th) / max_step``, ``for th in np.arange(min_th, max_th, delta)`` and ``maps > th``. Under
    NumPy 1.x, a float32 scalar divided by a Python int gave a float64 ``delta`` (so np.arange
    made float64 thresholds) and ``maps > th`` (float32 array, float64 scalar) was compared in
    float32. Both casts are written out here so that NumPy >= 2 runs the same arithmetic (its
    np.arange computes length, second value and fill exactly as 1.x did for these operand types).
    ``numpy1=False`` runs the released lines as they are under NumPy >= 2 (NEP 50): a float32
    step and comparisons in float64.
    """
    masks = np.asarray(masks, dtype=np.uint8)
    regions = []
    for i, mask in enumerate(masks):  # labels do not depend on the threshold: label once
        lab, n = ndimage.label(mask, structure=EIGHT)
        regions += [(i, np.argwhere(lab == r)) for r in range(1, n + 1)]
    inverse = 1 - masks
    min_th, max_th = maps.min(), maps.max()
    if numpy1:
        delta = np.float64(max_th - min_th) / max_step
    else:
        delta = (max_th - min_th) / max_step
    pros, fprs = [], []
    for th in np.arange(min_th, max_th, delta):
        binary = maps > (maps.dtype.type(th) if numpy1 else th)
        pros.append(np.mean([binary[i][c[:, 0], c[:, 1]].sum() / len(c) for i, c in regions]))
        fprs.append(np.logical_and(inverse, binary).sum() / inverse.sum())
    fprs, pros = np.array(fprs), np.array(pros)
    keep = fprs < expect_fpr
    f = fprs[keep]
    f = (f - f.min()) / (f.max() - f.min())
    return auc(f, pros[keep])


def blobs(rng, n, h, w, p_anom=0.7):
    yy, xx = np.mgrid[0:h, 0:w]
    masks = np.zeros((n, h, w), dtype=bool)
    for i in range(n):
        if i > 0 and rng.random() > p_anom:
            continue
        for _ in range(int(rng.integers(1, 5))):
            cy, cx = rng.uniform(0, h), rng.uniform(0, w)
            ry, rx = rng.uniform(0.8, h / 4), rng.uniform(0.8, w / 4)
            masks[i] |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    masks[0, h // 2, w // 2] = True
    masks[0, 0, 0] = True  # a one-pixel region
    masks[0, 1, 1] = True  # diagonal neighbour: same region under 8-connectivity
    return masks


def case(seed, n=5, h=19, w=16, quantise=None, dtype=np.float32, signal=0.5):
    rng = np.random.default_rng(seed)
    masks = blobs(rng, n, h, w)
    maps = rng.random((n, h, w)) + signal * masks * rng.random((n, 1, 1))
    if quantise:
        maps = np.round(maps * quantise) / quantise
    return masks, maps.astype(dtype)


def n_regions(masks):
    return sum(ndimage.label(m, structure=EIGHT)[1] for m in masks)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("quantise,dtype", [(None, np.float32), (10, np.float32), (None, np.float64)])
def test_exact_equals_plain_transcription(seed, quantise, dtype):
    masks, maps = case(seed, quantise=quantise, dtype=dtype)
    assert n_regions(masks) >= 3
    for max_fpr in (0.3, 0.05, 0.5, 1.0):
        ref = plain_exact(masks, maps, max_fpr)
        assert aupro(masks, maps, max_fpr=max_fpr) == pytest.approx(ref, abs=1e-10)


def test_exact_when_max_fpr_hits_a_curve_point():
    masks, maps = case(3, quantise=4)
    n_neg = int((~masks).sum())
    # a max_fpr equal to an attained FPR (no interpolation needed)
    t = np.unique(maps)[-2]
    max_fpr = float(((maps >= t) & ~masks).sum() / n_neg)
    assert 0 < max_fpr < 1
    assert aupro(masks, maps, max_fpr=max_fpr) == pytest.approx(
        plain_exact(masks, maps, max_fpr), abs=1e-10
    )


def test_exact_sampling_path_and_its_fallback(monkeypatch):
    masks, maps = case(8, n=6, h=24, w=24)
    ref = plain_exact(masks, maps)
    # sampled cut-off (normally only for millions of negatives)
    monkeypatch.setattr(pro, "_SAMPLE_MIN_NEGATIVES", 0)
    monkeypatch.setattr(pro, "_SAMPLE_TARGET", 256)
    monkeypatch.setattr(inputs, "_CHUNK_PIXELS", 24 * 24 * 2)
    assert aupro(masks, maps) == pytest.approx(ref, abs=1e-10)
    # a sample that only sees high scores guesses a cut-off that is too high: the exact check
    # must notice and fall back to all negatives
    stride = max(1, maps.size // 256) | 1
    biased = np.full(maps.shape, 0.1, dtype=np.float32)
    biased.reshape(-1)[::stride] = 0.9
    biased.reshape(-1)[1::7] += 0.01 * np.arange(biased.reshape(-1)[1::7].size) / maps.size
    biased[masks] += 0.3
    reads = []
    binary = inputs._Stack.binary
    monkeypatch.setattr(inputs._Stack, "binary", lambda self, i, j: reads.append(i) or binary(self, i, j))
    assert aupro(masks, maps) == pytest.approx(ref, abs=1e-10)
    n_chunks = 3
    assert len(reads) == 2 * n_chunks  # labelling pass + selection pass
    reads.clear()
    assert aupro(masks, biased) == pytest.approx(plain_exact(masks, biased), abs=1e-10)
    assert len(reads) == 3 * n_chunks  # the selection pass was redone with every negative


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(
    "quantise,dtype", [(None, np.float32), (None, np.float64), (200, np.float32), (200, np.float64)]
)
def test_grid200_equals_released_loop(seed, quantise, dtype):
    # quantise=200 puts many scores exactly on (or next to) the 200 grid thresholds
    masks, maps = case(seed, n=4, h=14, w=15, quantise=quantise, dtype=dtype)
    got = aupro(masks, maps, method="grid200")
    assert got == pytest.approx(released_loop(masks, maps), abs=1e-12)


def test_grid200_other_max_fpr_offset_range_and_chunks(monkeypatch):
    masks, maps = case(21, n=6, h=12, w=13)
    maps = (maps * 37.0 + 1000.0).astype(np.float32)  # coarse float32 grid relative to spacing
    monkeypatch.setattr(inputs, "_CHUNK_PIXELS", 12 * 13 * 2)
    for max_fpr in (0.3, 0.1, 0.7):
        assert aupro(masks, maps, max_fpr=max_fpr, method="grid200") == pytest.approx(
            released_loop(masks, maps, expect_fpr=max_fpr), abs=1e-12
        )


def smooth_case(seed, n=20, size=48):
    """n float32 maps, smooth noise plus a step on elliptic blob masks (about 70% anomalous)."""
    rng = np.random.default_rng(seed)
    masks = blobs(rng, n, size, size)
    maps = ndimage.gaussian_filter(rng.random((n, size, size)), (0, 1.5, 1.5)) + 0.15 * masks
    return masks, maps.astype(np.float32)


def test_grid200_is_the_numpy1_grid_not_the_numpy2_one():
    """The released code ran under NumPy 1.x: its float64 threshold step is what grid200 uses.
    The same lines under NumPy >= 2 (float32 step, float64 comparisons) shift the grid, which
    changes the value whenever a pixel lies between the two grids (about half of these cases)."""
    differs = []
    for seed in range(6):
        masks, maps = smooth_case(seed)
        numpy1 = released_loop(masks, maps)
        assert aupro(masks, maps, method="grid200") == pytest.approx(numpy1, abs=1e-12)
        differs.append(abs(released_loop(masks, maps, numpy1=False) - numpy1))
    assert sum(d > 1e-6 for d in differs) >= 2, differs  # 1.4e-6 and 1.9e-6 measured
    # float64 maps: both NumPy versions compute in float64 and agree
    maps64 = maps.astype(np.float64)
    assert aupro(masks, maps64, method="grid200") == pytest.approx(
        released_loop(masks, maps64, numpy1=False), abs=1e-12
    )


def test_grid200_value_computed_under_numpy1():
    """A value produced by running the released loop literally under NumPy 1.26.4 (SciPy 1.11.4
    labelling) on data made by plain IEEE arithmetic, identical on every platform."""
    n, h, w = 20, 40, 44
    i = np.arange(n * h * w, dtype=np.float64)
    maps = ((i * 0.6180339887498949) % 1.0).reshape(n, h, w)  # low-discrepancy values in [0, 1)
    yy, xx = np.mgrid[0:h, 0:w]
    masks = np.zeros((n, h, w), dtype=bool)
    for k in range(n):
        if k % 3 != 2:
            cy, cx = (7 * k) % h, (11 * k) % w
            masks[k] = ((yy - cy) / (3 + k % 5)) ** 2 + ((xx - cx) / (4 + k % 4)) ** 2 <= 1
    maps = (0.3 + 0.77 * maps + 0.4 * masks).astype(np.float32)
    assert aupro(masks, maps, method="grid200") == pytest.approx(NUMPY1_VALUE, abs=1e-12)
    assert aupro(masks, maps, method="grid200") == pytest.approx(released_loop(masks, maps), abs=1e-12)
    # the released lines under NumPy >= 2 give 0.6612877277364995
    assert abs(released_loop(masks, maps, numpy1=False) - NUMPY1_VALUE) > 1e-6


def test_released_thresholds_equal_numpy1_arange():
    """The written-out grid equals np.arange with NumPy 1.x's operand types (float64 step), cast
    to the maps' precision for the comparison, over many ranges -- including the ones where
    arange's length ceil(span / step) is 201."""
    rng = np.random.default_rng(0)
    sizes = []
    for dtype in (np.float32, np.float64):
        lo = (rng.standard_normal(400) * 10.0 ** rng.integers(-6, 6, 400)).astype(dtype)
        hi = (lo + np.abs(rng.standard_normal(400)) * 10.0 ** rng.integers(-8, 4, 400)).astype(dtype)
        for a, b in zip(lo, hi):
            if not b > a:
                continue
            ref = np.arange(a, b, np.float64(b - a) / 200).astype(dtype)
            got = pro._released_thresholds(a, b, np.dtype(dtype))
            assert got.dtype == dtype
            np.testing.assert_array_equal(got, ref)
            sizes.append(got.size)
    assert set(sizes) == {200, 201} and sizes.count(201) > 10


def test_grid200_range_too_wide_or_too_narrow():
    masks = np.zeros((1, 4, 4), dtype=bool)
    masks[0, 1, 1] = True
    wide = np.zeros((1, 4, 4), dtype=np.float32)
    wide[0, 0, 0], wide[0, 3, 3] = -3e38, 3e38  # max - min overflows float32
    with pytest.raises(UndefinedMetricError, match="cannot be split"):
        aupro(masks, wide, method="grid200")
    narrow = np.zeros((1, 4, 4), dtype=np.float64)
    narrow[0, 3, 3] = 5e-324  # max - min is the smallest subnormal: the step is 0
    with pytest.raises(UndefinedMetricError, match="cannot be split"):
        aupro(masks, narrow, method="grid200")
    assert issubclass(UndefinedMetricError, S2SWError)


def test_grid_index_matches_binary_search():
    rng = np.random.default_rng(0)
    for dtype in (np.float32, np.float64):
        x = np.concatenate([rng.random(5000), np.linspace(0, 1, 201), [0.0, 1.0]]).astype(dtype)
        ths = pro._released_thresholds(x.min(), x.max(), np.dtype(dtype))
        f = np.nextafter(ths, dtype(np.inf))
        k = pro._Grid(f).index(x)
        np.testing.assert_array_equal(k, np.searchsorted(f, x, side="right"))
        ref = (x[:, None] > ths[None, :]).sum(axis=1)
        np.testing.assert_array_equal(k, ref)
    # a grid too uneven for the arithmetic estimate falls back to the binary search
    f = np.array([0.0, 0.001, 0.9, 1.0], dtype=np.float32)
    x = rng.random(100).astype(np.float32)
    np.testing.assert_array_equal(pro._Grid(f).index(x), np.searchsorted(f, x, side="right"))


def test_variants_are_close_on_smooth_maps():
    rng = np.random.default_rng(4)
    masks = blobs(rng, 8, 48, 48)
    maps = ndimage.gaussian_filter(rng.random((8, 48, 48)), (0, 2, 2)) + 0.2 * masks
    maps = maps.astype(np.float32)
    assert abs(aupro(masks, maps) - aupro(masks, maps, method="grid200")) < 0.02
