"""AUPRO against plain transcriptions of its two definitions.

* exact: every distinct threshold t, pixels with score >= t are positive; FPR over all negative
  pixels, PRO = mean over all connected components (8-connectivity, per image) of the covered
  fraction; curve from (0, 0), trapezoid up to max_fpr with the point at max_fpr interpolated,
  divided by max_fpr (the MVTec AD evaluation).
* grid200: the released S2SW code's loop -- thresholds np.arange(min, max, (max-min)/200),
  score > t, PRO averaged over all regions, FPR < max_fpr kept and min-max rescaled,
  sklearn.metrics.auc.
"""

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import auc

from s2swclip.eval import metrics as M
from s2swclip.metrics import aupro

EIGHT = np.ones((3, 3), dtype=int)


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


def authors_loop(masks, maps, max_step=200, expect_fpr=0.3):
    masks = np.asarray(masks, dtype=np.uint8)
    binary = np.zeros_like(maps, dtype=bool)
    min_th, max_th = maps.min(), maps.max()
    delta = (max_th - min_th) / max_step
    pros, fprs = [], []
    for th in np.arange(min_th, max_th, delta):
        binary[maps <= th], binary[maps > th] = 0, 1
        pro = []
        for b, mask in zip(binary, masks):
            lab, n = ndimage.label(mask, structure=EIGHT)
            for r in range(1, n + 1):
                coords = np.argwhere(lab == r)
                pro.append(b[coords[:, 0], coords[:, 1]].sum() / len(coords))
        inverse = 1 - masks
        fprs.append(np.logical_and(inverse, binary).sum() / inverse.sum())
        pros.append(np.array(pro).mean())
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
    monkeypatch.setattr(M, "_SAMPLE_MIN_NEGATIVES", 0)
    monkeypatch.setattr(M, "_SAMPLE_TARGET", 256)
    monkeypatch.setattr(M, "_CHUNK_PIXELS", 24 * 24 * 2)
    assert aupro(masks, maps) == pytest.approx(ref, abs=1e-10)
    # a sample that only sees high scores guesses a cut-off that is too high: the exact check
    # must notice and fall back to all negatives
    stride = max(1, maps.size // 256) | 1
    biased = np.full(maps.shape, 0.1, dtype=np.float32)
    biased.reshape(-1)[::stride] = 0.9
    biased.reshape(-1)[1::7] += 0.01 * np.arange(biased.reshape(-1)[1::7].size) / maps.size
    biased[masks] += 0.3
    reads = []
    binary = M._Stack.binary
    monkeypatch.setattr(M._Stack, "binary", lambda self, i, j: reads.append(i) or binary(self, i, j))
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
def test_grid200_equals_authors_loop(seed, quantise, dtype):
    # quantise=200 puts many scores exactly on (or next to) the 200 grid thresholds
    masks, maps = case(seed, n=4, h=14, w=15, quantise=quantise, dtype=dtype)
    got = aupro(masks, maps, method="grid200")
    assert got == pytest.approx(authors_loop(masks, maps), abs=1e-9)


def test_grid200_other_max_fpr_offset_range_and_chunks(monkeypatch):
    masks, maps = case(21, n=6, h=12, w=13)
    maps = (maps * 37.0 + 1000.0).astype(np.float32)  # coarse float32 grid relative to spacing
    monkeypatch.setattr(M, "_CHUNK_PIXELS", 12 * 13 * 2)
    for max_fpr in (0.3, 0.1, 0.7):
        assert aupro(masks, maps, max_fpr=max_fpr, method="grid200") == pytest.approx(
            authors_loop(masks, maps, expect_fpr=max_fpr), abs=1e-9
        )


def test_grid_index_matches_binary_search():
    rng = np.random.default_rng(0)
    for dtype in (np.float32, np.float64):
        x = np.concatenate([rng.random(5000), np.linspace(0, 1, 201), [0.0, 1.0]]).astype(dtype)
        lo, hi = x.min(), x.max()
        ths = np.arange(lo, hi, (hi - lo) / 200)
        f = M._strict_upper(ths, np.dtype(dtype))
        assert all(((np.array([v]) > ths[t])[0]) for t, v in enumerate(f))
        k = M._Grid(f).index(x)
        np.testing.assert_array_equal(k, np.searchsorted(f, x, side="right"))
        ref = np.array([(x[i] > ths).sum() for i in range(x.size)])
        np.testing.assert_array_equal(k, ref)
    # a grid too uneven for the arithmetic estimate falls back to the binary search
    f = np.array([0.0, 0.001, 0.9, 1.0], dtype=np.float32)
    x = rng.random(100).astype(np.float32)
    np.testing.assert_array_equal(M._Grid(f).index(x), np.searchsorted(f, x, side="right"))


def test_variants_are_close_on_smooth_maps():
    rng = np.random.default_rng(4)
    masks = blobs(rng, 8, 48, 48)
    maps = ndimage.gaussian_filter(rng.random((8, 48, 48)), (0, 2, 2)) + 0.2 * masks
    maps = maps.astype(np.float32)
    assert abs(aupro(masks, maps) - aupro(masks, maps, method="grid200")) < 0.02
