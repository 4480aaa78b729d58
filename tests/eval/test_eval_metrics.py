"""Image/pixel AUROC, AP, F1-max against scikit-learn; input forms; degenerate inputs."""

import logging

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from s2swclip.errors import S2SWError
from s2swclip.eval.metrics import inputs, ranking
from s2swclip.metrics import (
    METRIC_KEYS,
    UndefinedMetricError,
    aupro,
    compute_metrics,
    image_ap,
    image_auroc,
    image_f1max,
    pixel_ap,
    pixel_auroc,
    pixel_f1max,
    pr_points,
    roc_points,
)


def sk_f1max(y, s):
    p, r, _ = precision_recall_curve(y, s)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = 2 * p * r / (p + r)
    return float(np.max(np.nan_to_num(f1)))


def random_case(rng, n, quantise=None, dtype=np.float64):
    y = rng.random(n) < rng.uniform(0.1, 0.6)
    y[0], y[1] = True, False
    s = rng.normal(size=n) + 0.8 * y
    if quantise:
        s = np.round(s * quantise) / quantise
    return y, s.astype(dtype)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("quantise", [None, 4])
def test_image_metrics_equal_sklearn(seed, quantise):
    rng = np.random.default_rng(seed)
    y, s = random_case(rng, int(rng.integers(5, 400)), quantise)
    assert image_auroc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert image_ap(y, s) == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert image_f1max(y, s) == pytest.approx(sk_f1max(y, s), abs=1e-12)


def test_image_metrics_int_labels_float32_scores_and_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(7)
    y, s = random_case(rng, 300, quantise=10, dtype=np.float32)
    yi = y.astype(np.int64)
    ref = roc_auc_score(y, s)
    assert image_auroc(yi, s) == pytest.approx(ref, abs=1e-12)
    assert image_auroc(torch.from_numpy(yi), torch.from_numpy(s)) == pytest.approx(ref, abs=1e-12)
    assert image_ap(list(yi), list(s)) == pytest.approx(average_precision_score(y, s), abs=1e-12)


def blob_masks(rng, n, h, w, p_anom=0.7):
    yy, xx = np.mgrid[0:h, 0:w]
    masks = np.zeros((n, h, w), dtype=bool)
    for i in range(n):
        if i > 0 and rng.random() > p_anom:
            continue
        for _ in range(int(rng.integers(1, 4))):
            cy, cx = rng.uniform(0, h), rng.uniform(0, w)
            ry, rx = rng.uniform(1.0, h / 4), rng.uniform(1.0, w / 4)
            masks[i] |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    masks[0, 0, 0] = True
    return masks


def pixel_case(seed, n=5, h=17, w=23, quantise=None, dtype=np.float32):
    rng = np.random.default_rng(seed)
    masks = blob_masks(rng, n, h, w)
    maps = rng.random((n, h, w)) + 0.6 * masks
    if quantise:
        maps = np.round(maps * quantise) / quantise
    return masks, maps.astype(dtype)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("quantise,dtype", [(None, np.float32), (8, np.float32), (None, np.float64)])
def test_pixel_metrics_equal_sklearn(seed, quantise, dtype):
    masks, maps = pixel_case(seed, quantise=quantise, dtype=dtype)
    y, s = masks.ravel(), maps.ravel()
    assert pixel_auroc(masks, maps) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert pixel_ap(masks, maps) == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert pixel_f1max(masks, maps) == pytest.approx(sk_f1max(y, s), abs=1e-12)


def test_pixel_metrics_chunked_equal_unchunked(monkeypatch):
    masks, maps = pixel_case(11, n=9, quantise=16)
    ref = (pixel_auroc(masks, maps), pixel_ap(masks, maps), pixel_f1max(masks, maps))
    monkeypatch.setattr(inputs, "_CHUNK_PIXELS", 17 * 23 * 2)
    monkeypatch.setattr(ranking, "_SORT_CHUNK_PIXELS", 17 * 23 * 3)
    got = (pixel_auroc(masks, maps), pixel_ap(masks, maps), pixel_f1max(masks, maps))
    assert got == pytest.approx(ref, abs=1e-12)


def test_pixel_input_forms():
    torch = pytest.importorskip("torch")
    masks, maps = pixel_case(3)
    ref_auc, ref_pro = pixel_auroc(masks, maps), aupro(masks, maps)
    forms = [
        (torch.from_numpy(masks), torch.from_numpy(maps)),
        (torch.from_numpy(masks.astype(np.float32))[:, None], torch.from_numpy(maps)[:, None]),
        (list(masks.astype(np.uint8)), [torch.from_numpy(m) for m in maps]),
        (masks.astype(np.float64), maps.astype(np.float16).astype(np.float32)),
    ]
    for m, x in forms[:3]:
        assert pixel_auroc(m, x) == pytest.approx(ref_auc, abs=1e-12)
        assert aupro(m, x) == pytest.approx(ref_pro, abs=1e-12)
        assert aupro(m, x, method="grid200") == pytest.approx(
            aupro(masks, maps, method="grid200"), abs=1e-12
        )
    # float64 masks are binarised at 0.5; float16-rounded maps have ties of their own
    m, x = forms[3]
    assert pixel_auroc(m, x) == pytest.approx(roc_auc_score(masks.ravel(), x.ravel()), abs=1e-12)
    assert pixel_auroc(m * 0.6, x) == pytest.approx(pixel_auroc(m, x), abs=1e-12)
    assert pixel_ap(torch.from_numpy(x).half(), x) == pytest.approx(
        average_precision_score(x.ravel() > 0.5, x.ravel()), abs=1e-12
    )
    # a single [H,W] pair is one image
    assert pixel_auroc(masks[0], maps[0]) == pytest.approx(
        roc_auc_score(masks[0].ravel(), maps[0].ravel()), abs=1e-12
    )


def test_curve_points_match_sklearn():
    from sklearn.metrics import roc_curve

    rng = np.random.default_rng(5)
    y, s = random_case(rng, 200, quantise=5)
    fpr, tpr = roc_points(y, s)
    f2, t2, _ = roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(fpr, f2, atol=1e-12)
    np.testing.assert_allclose(tpr, t2, atol=1e-12)
    rec, prec = pr_points(y, s)
    p2, r2, _ = precision_recall_curve(y, s)
    # sklearn lists low -> high thresholds and appends (precision 1, recall 0)
    np.testing.assert_allclose(prec, p2[:-1][::-1], atol=1e-12)
    np.testing.assert_allclose(rec, r2[:-1][::-1], atol=1e-12)


# ------------------------------------------------------------------ degenerate inputs


@pytest.mark.parametrize("fn", [image_auroc, image_ap, image_f1max])
def test_image_single_class_is_a_clear_error(fn):
    for y in (np.zeros(6), np.ones(6)):
        with pytest.raises(UndefinedMetricError, match="undefined") as info:
            fn(y, np.linspace(0, 1, 6))
        assert isinstance(info.value, S2SWError)
        assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "labels,scores,match",
    [
        ([0, 1, 2], [0.1, 0.2, 0.3], "binary"),
        ([0, 1, 1], [0.1, float("nan"), 0.3], "finite"),
        ([0, 1, 1], [0.1, float("inf"), 0.3], "finite"),
        ([0, 1], [0.1, 0.2, 0.3], "same length"),
        ([], [], "empty"),
    ],
)
def test_image_invalid_inputs(labels, scores, match):
    with pytest.raises(S2SWError, match=match):
        image_auroc(np.array(labels), np.array(scores))


def test_constant_scores_have_documented_values():
    y = np.array([1, 0, 0, 1, 0, 0, 0, 0])
    s = np.full(8, 0.3)
    assert image_auroc(y, s) == 0.5 == roc_auc_score(y, s)
    assert image_ap(y, s) == pytest.approx(2 / 8)
    assert image_f1max(y, s) == pytest.approx(2 * 2 / (2 * 2 + 6))
    masks, _ = pixel_case(1)
    maps = np.full(masks.shape, 0.25, dtype=np.float32)
    assert pixel_auroc(masks, maps) == 0.5
    assert aupro(masks, maps) == pytest.approx(0.15)
    assert aupro(masks, maps, max_fpr=1.0) == pytest.approx(0.5)
    with pytest.raises(UndefinedMetricError, match="constant"):
        aupro(masks, maps, method="grid200")


@pytest.mark.parametrize("fn", [pixel_auroc, pixel_ap, pixel_f1max, aupro])
def test_pixel_degenerate_masks(fn):
    maps = np.random.default_rng(0).random((3, 8, 8)).astype(np.float32)
    for masks in (np.zeros((3, 8, 8), bool), np.ones((3, 8, 8), bool)):
        with pytest.raises(UndefinedMetricError):
            fn(masks, maps)
    with pytest.raises(UndefinedMetricError, match="no anomalous region"):
        aupro(np.zeros((3, 8, 8), bool), maps, method="grid200")


def test_pixel_invalid_inputs():
    masks, maps = pixel_case(2)
    with pytest.raises(S2SWError, match="same shape"):
        pixel_auroc(masks, maps[:, :-1])
    bad = maps.copy()
    bad[1, 2, 3] = np.nan
    for method in ("exact", "grid200"):
        with pytest.raises(S2SWError, match="finite"):
            aupro(masks, bad, method=method)
    with pytest.raises(S2SWError, match="finite"):
        pixel_auroc(masks, bad)
    with pytest.raises(S2SWError, match="unknown AUPRO method"):
        aupro(masks, maps, method="fast")
    for v in (0, -0.1, 1.5, "x"):
        with pytest.raises(S2SWError, match="max_fpr"):
            aupro(masks, maps, max_fpr=v)
    with pytest.raises(S2SWError, match=r"\[N,H,W\]"):
        pixel_auroc(masks[None, None], maps[None, None])


def test_compute_metrics_all_keys():
    masks, maps = pixel_case(4, n=6)
    labels = masks.reshape(6, -1).any(1)
    scores = maps.reshape(6, -1).max(1)
    out = compute_metrics(labels, scores, masks, maps)
    assert tuple(out) == METRIC_KEYS
    assert all(isinstance(v, float) for v in out.values())
    y, s = masks.ravel(), maps.ravel()
    expected = {
        "image_auroc": roc_auc_score(labels, scores),
        "image_ap": average_precision_score(labels, scores),
        "image_f1max": sk_f1max(labels, scores),
        "pixel_auroc": roc_auc_score(y, s),
        "pixel_ap": average_precision_score(y, s),
        "pixel_f1max": sk_f1max(y, s),
        "pixel_aupro": aupro(masks, maps),
    }
    assert out == pytest.approx(expected, abs=1e-12)
    g = compute_metrics(labels, scores, masks, maps, aupro_method="grid200")
    assert g["pixel_aupro"] == pytest.approx(aupro(masks, maps, method="grid200"))
    img_only = compute_metrics(labels, scores)
    assert tuple(img_only) == METRIC_KEYS
    assert all(img_only[k] is None for k in METRIC_KEYS if k.startswith("pixel"))
    assert compute_metrics(labels, scores, masks, maps, pixel=False)["pixel_ap"] is None
    with pytest.raises(S2SWError, match="must match"):
        compute_metrics(labels[:-1], scores[:-1], masks, maps)
    with pytest.raises(S2SWError, match="unknown AUPRO method"):
        compute_metrics(labels, scores, aupro_method="nope")


def test_compute_metrics_undefined_become_none_with_a_logged_warning(caplog):
    masks, maps = pixel_case(4, n=6)
    labels = np.ones(6)  # every image anomalous: image metrics undefined
    with caplog.at_level(logging.WARNING, logger="s2swclip"):
        out = compute_metrics(labels, np.linspace(0, 1, 6), np.zeros_like(masks), maps, where="toy/a")
    messages = [r.getMessage() for r in caplog.records]
    assert [r.levelno for r in caplog.records] == [logging.WARNING] * 3
    assert [m.split(" recorded as None: ")[0] for m in messages] == [
        "toy/a: image_auroc, image_ap, image_f1max",
        "toy/a: pixel_auroc, pixel_ap, pixel_f1max",
        "toy/a: pixel_aupro",
    ]
    assert all(r.name == "s2swclip.eval.metrics" for r in caplog.records)
    assert out == {k: None for k in METRIC_KEYS}
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="s2swclip"):
        out = compute_metrics(np.array([0, 1, 0, 1, 1, 0]), np.linspace(0, 1, 6), masks, maps)
    assert caplog.records == [] and None not in out.values()
    with caplog.at_level(logging.WARNING, logger="s2swclip"):
        compute_metrics(labels, np.linspace(0, 1, 6))
    assert caplog.records[0].getMessage().startswith("image_auroc, image_ap, image_f1max recorded as None: ")
