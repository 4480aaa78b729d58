"""Heatmap colour scales: one scale per run, centred on the threshold on the per-layer map scale,
so a normal image is not painted red; the colour bar shows the values."""

import io
import json

import numpy as np
import pytest
from PIL import Image

from s2swclip.viz.figures import jet_colormap, save_overlay
from s2swclip.viz.heatmap import (COLORBAR_HEIGHT, MIN_HALF_WIDTH, HeatmapScale, OverlayPainter,
                                        colorbar_image, fixed_scale, image_scale, range_scale)
from s2swclip.inference.pipeline import overlay_png

L = 4.0  # feature layers: the map sums four per-layer probabilities


@pytest.mark.parametrize("t,lo,hi", [(0.6, 0.2, 1.0), (0.3, 0.0, 0.6), (0.5, 0.0, 1.0),
                                     (0.99, 0.94, 1.0), (0.0, 0.0, MIN_HALF_WIDTH)])
def test_the_fixed_scale_is_centred_on_the_threshold(t, lo, hi):
    s = fixed_scale(t, L)
    d = max(min(t, 1 - t), MIN_HALF_WIDTH)
    assert (s.lo, s.hi) == pytest.approx((max(0, t - d), min(1, t + d)))
    assert (s.lo, s.hi) == pytest.approx((lo, hi))
    assert (s.vmin, s.vmax) == pytest.approx((lo * L, hi * L)) and s.threshold == t
    assert s.to_dict()["source"] == "threshold"


def test_no_fixed_scale_without_a_threshold_or_a_map_scale():
    assert fixed_scale(None, L) is None and fixed_scale(0.5, None) is None


def test_range_scales_follow_the_maps():
    maps = [np.array([[0.4, 2.0]]), np.array([[1.2, 3.6]])]
    s = range_scale(maps, L, threshold=0.5)
    assert (s.lo, s.hi, s.threshold, s.source) == (pytest.approx(0.1), pytest.approx(0.9), 0.5, "run")
    raw = range_scale(maps, None, threshold=0.5)  # L unknown: raw map values, no threshold mark
    assert (raw.lo, raw.hi, raw.threshold, raw.map_scale) == (0.4, 3.6, None, 1.0)
    assert image_scale(maps[0], L).to_dict()["source"] == "image"
    assert (range_scale([], L).lo, range_scale([], L).hi) == (0.0, 1.0)


def _colours(png):
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)


def test_a_normal_image_stays_blue_on_the_fixed_scale_but_gets_red_spots_per_image():
    preview = Image.new("RGB", (40, 40), (128, 128, 128))
    rng = np.random.default_rng(0)
    u = 0.30 + 0.05 * rng.random((40, 40))  # a normal image: far below the threshold 0.7 everywhere
    amap = (u * L).astype(np.float32)
    fixed = _colours(overlay_png(preview, amap, alpha=0.0, scale=fixed_scale(0.7, L)))
    own = _colours(overlay_png(preview, amap, alpha=0.0, scale=image_scale(amap, L)))
    # jet: blue channel dominates below the middle, red above it
    assert (fixed[..., 2] > fixed[..., 0]).all() and fixed[..., 0].max() == 0
    assert (own[..., 0] > 200).any() and (own[..., 2] < 50).any()
    # the same map values give the same colours in every image of the run on the fixed scale
    expected = jet_colormap((u - 0.4) / 0.6)
    assert np.abs(fixed - expected).max() <= 1


def test_an_overlay_with_its_colour_bar():
    preview = Image.new("RGB", (120, 60), (128, 128, 128))
    amap = np.full((32, 32), 2.0, np.float32)
    scale = fixed_scale(0.6, L)
    png = overlay_png(preview, amap, scale=scale, colorbar=True)
    img = _colours(png)
    assert img.shape == (60 + COLORBAR_HEIGHT, 120, 3)
    assert (_colours(overlay_png(preview, amap, scale=scale))).shape == (60, 120, 3)  # bar on request
    bar = img[60:]
    np.testing.assert_array_equal(bar[5, 3], jet_colormap(0.0))  # gradient from lo ...
    np.testing.assert_array_equal(bar[5, 116], jet_colormap(1.0))  # ... to hi
    x = 3 + (0.6 - 0.2) / 0.8 * (114 - 1)
    assert (bar[:12, int(round(x))] == 0).all()  # the threshold: a black tick at its value
    assert (bar[16:28] < 100).all(axis=2).sum() > 40  # values written under the bar
    strip = np.asarray(colorbar_image(120, HeatmapScale(0.0, 1.0, L, None, "full")))
    assert strip.shape == (COLORBAR_HEIGHT, 120, 3) and not (strip[:12, 50:70] == 0).all(axis=2).any()


def _painter(mode, threshold, window=3):
    written = []
    painter = OverlayPainter(mode, threshold, L, draw=lambda p, m, s: (m, s), write=lambda t, v: written.append((t, v)),
                             window=window)
    return painter, written


def test_the_painter_draws_at_once_when_the_threshold_fixes_the_scale():
    painter, written = _painter("fixed", 0.6)
    painter.add(None, np.zeros((2, 2)), "a")
    assert [t for t, _ in written] == ["a"] and written[0][1][1] == fixed_scale(0.6, L)
    assert painter.describe()["source"] == "threshold"


def test_without_a_threshold_the_first_window_decides_the_scale_and_memory_stays_bounded():
    painter, written = _painter("fixed", None, window=3)
    maps = [np.full((2, 2), v) for v in (0.4, 2.0, 1.2, 3.96, 0.0)]
    for i, m in enumerate(maps[:2]):
        painter.add(None, m, i)
    assert written == [] and len(painter._held) == 2  # held until the window is full
    painter.add(None, maps[2], 2)
    assert [t for t, _ in written] == [0, 1, 2] and painter._held == []
    for i, m in enumerate(maps[3:], start=3):
        painter.add(None, m, i)  # drawn at once, on the window's scale (values outside are clipped)
    assert [t for t, _ in written] == [0, 1, 2, 3, 4]
    scales = {v[1] for _, v in written}
    assert scales == {HeatmapScale(0.1, 0.5, L, None, "run")}
    painter.flush()  # nothing held: nothing more
    assert len(written) == 5


def test_a_short_run_is_drawn_on_its_range_at_the_end():
    painter, written = _painter("fixed", None, window=10)
    painter.add(None, np.full((2, 2), 1.0), "a")
    painter.add(None, np.full((2, 2), 3.0), "b")
    assert written == []
    painter.flush()
    assert [t for t, _ in written] == ["a", "b"] and painter.describe()["lo"] == 0.25


def test_per_image_scaling_is_kept_as_an_option():
    painter, written = _painter("image", 0.6)
    painter.add(None, np.array([[1.0, 3.0]]), "a")
    assert written[0][1][1] == HeatmapScale(0.25, 0.75, L, 0.6, "image")
    assert painter.describe() == {"source": "image"}
    with pytest.raises(ValueError):
        OverlayPainter("per-image", None, L, draw=None, write=None)


def test_test_figures_carry_their_colour_bar(tmp_path):
    img = np.zeros((40, 50, 3), np.uint8)
    p = save_overlay(img, None, np.zeros((40, 50)), str(tmp_path / "o.png"), title="t",
                     scale=fixed_scale(0.5, L))
    assert Image.open(p).size == (150, 40 + 48 + 36)


# ------------------------------------------------------------------------------ through predict
@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    d = tmp_path_factory.mktemp("pictures")
    rng = np.random.default_rng(3)
    for i in range(5):
        Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(d / f"p{i}.png")
    return d


@pytest.mark.parametrize("kw,source", [(dict(threshold=0.55), "threshold"), ({}, "run"),
                                       (dict(threshold=0.55, heatmap_scale="image"), "image")])
def test_predict_records_the_scale_and_draws_the_bar(tiny_detector, pictures, tmp_path, kw, source):
    from s2swclip.inference.local import predict_files
    from s2swclip.inference.scorers import as_scorer

    out = tmp_path / "out"
    summary = predict_files(as_scorer(tiny_detector), [str(pictures)], out, progress=False, scale_window=2, **kw)
    saved = json.loads((out / "results.json").read_text())
    assert saved["heatmap"]["source"] == source == summary.heatmap["source"]
    if source == "threshold":
        assert saved["heatmap"]["lo"] == pytest.approx(0.1) and saved["heatmap"]["hi"] == pytest.approx(1.0)
    if source == "run":  # the first two maps' range (window 2), on the per-layer scale
        assert 0 < saved["heatmap"]["lo"] < saved["heatmap"]["hi"] < 1 and saved["heatmap"]["map_scale"] == 4.0
    for row in saved["results"]:
        assert Image.open(out / row["overlay"]).size == (224, 168 + COLORBAR_HEIGHT)


# --------------------------------------------------------------------------- through the test protocol
@pytest.mark.parametrize("mode", ["fixed", "image"])
def test_test_figures_of_a_class_share_the_range_of_its_maps(tiny_detector, tmp_path, monkeypatch, mode):
    import s2swclip.viz.figures as figures
    from s2swclip.data.synthetic import generate_dataset
    from s2swclip.eval.protocol import evaluate_dataset

    root = generate_dataset(tmp_path / "syn", classes=["marble"], n_train_good=1, n_test_good=2,
                            n_test_defect=3, image_size=96, seed=2)
    drawn, maps = [], []
    real_save, real_predict = figures.save_overlay, tiny_detector.predict

    def save(image, mask, amap, path, **kw):
        drawn.append((amap, kw["scale"]))
        return real_save(image, mask, amap, path, **kw)

    def predict(images):
        out = real_predict(images)
        maps.append(out.anomaly_maps.numpy())
        return out

    monkeypatch.setattr(figures, "save_overlay", save)
    monkeypatch.setattr(tiny_detector, "predict", predict)
    evaluate_dataset(tiny_detector, root, out_dir=tmp_path / "rep", figures_per_class=2, progress=False,
                     batch_size=2, aupro_method="grid200", heatmap_scale=mode)
    assert len(drawn) == 2
    every = np.concatenate(maps)
    for amap, scale in drawn:
        if mode == "fixed":  # all of the class's maps, normal ones included, on the per-layer scale
            assert (scale.source, scale.vmin, scale.vmax) == ("run", pytest.approx(every.min()),
                                                              pytest.approx(every.max()))
        else:
            assert (scale.source, scale.vmin, scale.vmax) == ("image", pytest.approx(amap.min()),
                                                              pytest.approx(amap.max()))
        assert scale.map_scale == 4.0
    pngs = sorted((tmp_path / "rep" / "figures" / "marble").glob("*.png"))
    assert len(pngs) == 2 and all(Image.open(p).size == (3 * 224, 224 + 48 + 36) for p in pngs)
