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


def test_map_fraction_above_matches_a_plain_transcription():
    from s2swclip.inference.pipeline import map_fraction_above

    rng = np.random.default_rng(3)
    for _ in range(20):
        s = int(rng.integers(3, 40))
        layers = int(rng.integers(1, 6))
        amap = (rng.random((s, s)) * layers).astype(np.float32)
        t = float(rng.random())
        expected = sum(float(v) / layers > t for v in amap.ravel()) / (s * s)
        assert map_fraction_above(amap, t, layers) == expected


def test_pipeline_reports_map_fraction_on_the_score_scale():
    scorer = CountingScorer()
    scorer.map_scale = 2.0  # the ramp 0..1 read as 0..0.5 on the score scale
    recs = list(InferencePipeline(scorer, threshold=0.25).run([(_png(1), "a.png")]))
    ramp = np.linspace(0, 1, 32 * 32, dtype=np.float32)
    assert recs[0].map_frac_above == np.count_nonzero(ramp.astype(np.float64) / 2 > 0.25) / ramp.size
    # no threshold, or a scorer that does not say its map scale: no fraction
    assert list(InferencePipeline(scorer).run([(_png(1), "a.png")]))[0].map_frac_above is None
    assert list(InferencePipeline(CountingScorer(), threshold=0.25).run([(_png(1), "a.png")]))[0].map_frac_above is None


def test_detector_map_scale_is_the_number_of_summed_layers(tiny_detector):
    scorer = DetectorScorer(tiny_detector)
    assert scorer.map_scale == len(tiny_detector.config.feature_layers) == 4
    scores, maps = scorer.score(np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32))
    assert 0 <= maps.min() and maps.max() <= scorer.map_scale  # per-layer probabilities, summed


def test_decoder_reads_uris_like_paths(tmp_path):
    from s2swclip.inference.pipeline import Decoder

    (tmp_path / "a.png").write_bytes(_png(4))
    dec = Decoder(32)
    local = dec.decode(str(tmp_path / "a.png"))
    remote = dec.decode(f"file://{tmp_path}/a.png")
    assert remote.source == f"file://{tmp_path}/a.png" and remote.error is None
    assert np.array_equal(local.pixels, remote.pixels) and (remote.width, remote.height) == (40, 30)
    missing = dec.decode(f"file://{tmp_path}/gone.png")
    assert missing.error_code == "missing" and f"file://{tmp_path}/gone.png" in missing.error
    (tmp_path / "junk.png").write_bytes(b"junk")
    junk = dec.decode(f"file://{tmp_path}/junk.png")
    assert junk.error_code == "not_an_image" and junk.error.startswith(f"file://{tmp_path}/junk.png: ")
    (tmp_path / "big.png").write_bytes(_png(5))
    big = Decoder(32, max_remote_bytes=100).decode(f"file://{tmp_path}/big.png")
    assert big.error_code == "unreadable" and "more than the limit of 100 bytes" in big.error


def test_jobs_run_on_the_workers_and_a_failure_is_raised_by_drain():
    pipe = InferencePipeline(CountingScorer(), batch_size=2, decode_workers=2)
    done = []
    for i in range(6):
        pipe.submit(done.append, i)

    def fail():
        raise OSError(28, "No space left on device")

    pipe.submit(fail)
    with pytest.raises(OSError, match="No space left"):
        pipe.drain()  # the failure, even when the job finished long before
    assert sorted(done) == list(range(6))
    pipe.drain()  # reported once
    pipe.close()


def test_records_carry_the_digest_of_the_bytes_decoded(tmp_path):
    import hashlib

    good, bad = tmp_path / "a.png", tmp_path / "b.png"
    good.write_bytes(_png(1))
    bad.write_bytes(b"")
    pipe = InferencePipeline(CountingScorer(), batch_size=2)
    recs = list(pipe.run([(str(good), "a.png"), (str(bad), "b.png"), (_png(2), "c.png")], digest=True))
    assert [r.sha256 for r in recs] == [hashlib.sha256(x).hexdigest() for x in (_png(1), b"", _png(2))]
    assert recs[0].error is None and recs[1].error_code == "empty" and recs[2].error is None
    plain = list(pipe.run([(str(good), "a.png")]))
    assert plain[0].sha256 is None and plain[0].score == pytest.approx(recs[0].score, abs=1e-7)
    pipe.close()


def test_default_workers_feed_an_accelerator_with_every_core(monkeypatch):
    """On the CPU the workers take at most 4 cores from the model; next to a GPU decoding and
    overlays are the bottleneck, so every core this process may use works (capped)."""
    import os

    from s2swclip.inference import pipeline

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    assert pipeline.default_workers() == 4
    assert pipeline.default_workers("cpu") == pipeline.default_workers("CPU") == 4
    assert pipeline.default_workers("cuda:0") == 16
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(96)))
    assert pipeline.default_workers("cuda") == pipeline.MAX_ACCELERATOR_WORKERS == 16
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert pipeline.default_workers("cpu") == pipeline.default_workers("cuda") == 2

    class OnGpu(CountingScorer):
        device = "cuda:0"

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    assert InferencePipeline(OnGpu()).decode_workers == 16
    assert InferencePipeline(CountingScorer()).decode_workers == 4
    assert InferencePipeline(OnGpu(), decode_workers=3).decode_workers == 3


def test_a_detector_scorer_tells_its_device(tiny_detector):
    assert DetectorScorer(tiny_detector).device == "cpu"
