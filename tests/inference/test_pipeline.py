"""The shared inference pipeline: order, batching, equality with the detector, bounded memory."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from s2swclip.data.images import preprocess
from s2swclip.inference.pipeline import InferencePipeline, overlay_png
from s2swclip.inference.scorers import DetectorScorer


class CountingScorer:
    """Score = mean of the input; map = a ramp. Records the batch sizes it was called with."""

    image_size = 32

    def __init__(self):
        self.batches = []

    def score(self, pixels):
        self.batches.append(len(pixels))
        maps = np.broadcast_to(np.linspace(0, 1, 32 * 32, dtype=np.float32).reshape(32, 32), (len(pixels), 32, 32))
        return pixels.mean(axis=(1, 2, 3)), maps.copy()

    def describe(self):
        return {"engine": "counting"}


def _png(seed, w=40, h=30):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_records_come_back_in_input_order_with_errors_in_place():
    scorer = CountingScorer()
    pipe = InferencePipeline(scorer, batch_size=3, threshold=0.0)
    sources = [(_png(i), f"f{i}.png") if i not in (2, 5) else (b"junk", f"f{i}.png") for i in range(8)]
    recs = list(pipe.run(sources))
    assert [r.index for r in recs] == list(range(8)) and [r.name for r in recs] == [s[1] for s in sources]
    assert [r.error_code for r in recs] == [None, None, "not_an_image", None, None, "not_an_image", None, None]
    assert scorer.batches == [3, 3]  # six decodable images, batches of three
    for r, (src, _) in zip(recs, sources):
        if r.error is None:
            x = preprocess(Image.open(io.BytesIO(src)), 32)
            assert r.score == pytest.approx(float(x.mean()), abs=1e-6)
            assert r.anomalous == (r.score > 0.0) and r.map_max == pytest.approx(1.0)
            assert (r.width, r.height) == (40, 30)


def test_detector_scorer_equals_predict(tiny_detector):
    pipe = InferencePipeline(DetectorScorer(tiny_detector), batch_size=2)
    sources = [(_png(i, 64, 48), f"{i}.png") for i in range(3)]
    recs = list(pipe.run(sources))
    x = torch.stack([torch.from_numpy(preprocess(Image.open(io.BytesIO(s)), 224)) for s, _ in sources])
    ref = tiny_detector.predict(x)
    assert np.allclose([r.score for r in recs], ref.image_scores.numpy(), atol=1e-6)
    # each map is released after use in engines; here the last one is still attached
    assert np.allclose(recs[-1].anomaly_map, ref.anomaly_maps[-1].numpy(), atol=1e-6)


def test_overlay_keeps_the_aspect_ratio_and_colours_by_scale():
    preview = Image.new("RGB", (60, 30), (128, 128, 128))
    amap = np.zeros((32, 32), np.float32)
    amap[:, 16:] = 1.0
    img = Image.open(io.BytesIO(overlay_png(preview, amap)))
    assert img.size == (60, 30)
    px = np.asarray(img).astype(int)
    assert px[15, 5, 2] > px[15, 5, 0] and px[15, 55, 0] > px[15, 55, 2]  # blue left, red right
    flat = np.asarray(Image.open(io.BytesIO(overlay_png(preview, amap, vmin=0.0, vmax=100.0)))).astype(int)
    assert abs(flat[15, 5] - flat[15, 55]).max() <= 8  # on a 0..100 scale both halves are low


def test_batch_size_must_be_positive():
    with pytest.raises(ValueError):
        InferencePipeline(CountingScorer(), batch_size=0)
