"""The detector's composition (``docs/method.md`` §5-§7) against plain transcriptions."""

import numpy as np
import pytest
import pywt
import scipy.ndimage
import torch
import torch.nn.functional as F

from s2swclip.model.detector import TEXT_SETS
from helpers import make_images


def _np_softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _np_similarity(f, t, tref):
    def h(x):
        p = _np_softmax(x)
        return -(p * np.log(p + 1e-10)).sum(-1)

    def r(x):
        p = _np_softmax(x)
        return 2 * np.log((p ** 0.5 + 1e-10).sum(-1))

    dot = f @ t.T
    gh = 1 - np.abs(h(f)[..., None] - h(t)[None, None])
    gr = 1 - np.abs(r(f)[..., None] - r(tref)[None, None])
    return _np_softmax(dot * gh * gr / 0.07)


def _np_multiscale(f):
    """h(F) (``docs/method.md`` §6.1) via torch's pooling/interp on one [1,N,C] array (float64)."""
    x = torch.from_numpy(f)[None]
    n, c = x.shape[1:]
    up = F.interpolate(x.transpose(1, 2), scale_factor=1.5, mode="linear", align_corners=True)[:, :, :n].transpose(1, 2)
    a = F.adaptive_avg_pool1d(x.transpose(1, 2), 384).transpose(1, 2)
    m = F.adaptive_max_pool1d(x.transpose(1, 2), 384).transpose(1, 2)
    cc = F.adaptive_max_pool1d(torch.cat([a, m], 2), c)
    att = a + m
    w = torch.softmax(att.mean(1, keepdim=True), dim=2)
    s = torch.sigmoid(w * a + (1 - w) * m + att + cc)
    s = F.interpolate(s.transpose(1, 2), size=n, mode="linear", align_corners=True).transpose(1, 2)
    return (0.01 * up + 0.99 * s)[0].numpy()


def _np_wavelet(f):
    (a, (h, v, d)), = pywt.swt2(f, "sym2", level=1)
    z = 0.1 * a + 0.9 * (h + v + d)
    a2, (h2, v2, d2) = pywt.dwt2(f, "haar", mode="symmetric")
    low = 0.9 * a2 + 0.1 * (h2 + v2 + d2) / 3
    low = F.interpolate(torch.from_numpy(low)[None, None], size=f.shape, mode="bilinear", align_corners=False)[0, 0].numpy()
    return 0.99 * low + 0.01 * z


def _np_bilinear(img, size):
    return F.interpolate(torch.from_numpy(img)[None], size=(size, size), mode="bilinear", align_corners=False)[0].numpy()


def test_predict_matches_per_image_transcription(tiny_detector):
    """Authors' order of operations, one image at a time, in float64 NumPy/PyWavelets/SciPy:
    per layer, per channel resize, 0.9/0.1 mix, sum over the 4 layers, scipy gaussian_filter."""
    det = tiny_detector
    size = 238  # 17x17 -> 290 tokens: even, so pywt.swt2 applies directly
    images = make_images(2, size, seed=1)
    out = det.predict(images)
    with torch.no_grad():
        text = det.text_features()
    tf = text.unit["fused"].double().numpy()
    with torch.no_grad():
        glob, patches = det.backbone.encode_image(images)
    for b in range(2):
        g = glob[b].double().numpy()
        g = g / np.linalg.norm(g)
        probs = [_np_softmax(g @ text.unit[k].double().numpy().T / 0.07)[1] for k in TEXT_SETS]
        assert abs(np.mean(probs) - out.image_scores[b].item()) < 1e-5
        total = 0
        for p in patches:  # four entries (aliased), each computed in full here
            f = p[b].double().numpy()
            f = f / np.linalg.norm(f, axis=-1, keepdims=True)
            fh = 0.2 * _np_multiscale(f) + 0.8 * f
            fh = fh / np.linalg.norm(fh, axis=-1, keepdims=True)
            layer = 0
            for feats, weight in ((fh, 0.9), (_np_wavelet(f), 0.1)):
                sim = _np_similarity(feats[None], tf, tf)[0, 1:]  # drop class token
                grid = int(np.sqrt(sim.shape[0]))
                sm = _np_bilinear(sim.reshape(grid, grid, 2).transpose(2, 0, 1).copy(), size)
                layer = layer + weight * (sm[1] + 1 - sm[0]) / 2
            total = total + layer
        ref = scipy.ndimage.gaussian_filter(total, sigma=4, mode="reflect", truncate=4.0)
        assert np.abs(ref - out.anomaly_maps[b].double().numpy()).max() < 2e-5


def test_batch_invariance(tiny_detector):
    images = make_images(3, 224, seed=2)
    batch = tiny_detector.predict(images)
    for i in range(3):
        one = tiny_detector.predict(images[i:i + 1])
        assert torch.allclose(one.image_scores, batch.image_scores[i:i + 1], atol=1e-6)
        assert (one.anomaly_maps - batch.anomaly_maps[i:i + 1]).abs().max() < 1e-5


def test_outputs_shapes_and_ranges(tiny_detector):
    out = tiny_detector.predict(make_images(2, 224))
    assert out.image_scores.shape == (2,) and out.anomaly_maps.shape == (2, 224, 224)
    assert ((out.image_scores >= 0) & (out.image_scores <= 1)).all()
    assert torch.isfinite(out.anomaly_maps).all()


@pytest.mark.parametrize("size", [224, 336, 210])  # 257, 577 and 226 tokens: odd and even
def test_any_token_count_is_handled(tiny_detector, size):
    out = tiny_detector.predict(make_images(1, size))
    assert out.anomaly_maps.shape == (1, size, size)
    assert torch.isfinite(out.anomaly_maps).all() and torch.isfinite(out.image_scores).all()


def _count_text_encodings(det, monkeypatch):
    calls = []
    real = det.backbone.encode_text
    monkeypatch.setattr(det.backbone, "encode_text", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


def test_text_features_computed_once(own_detector, monkeypatch):
    calls = _count_text_encodings(own_detector, monkeypatch)
    own_detector.predict(make_images(1, 224))
    own_detector.predict(make_images(2, 224))
    assert len(calls) == 3  # one per family, for as long as the prompts stay the same


def test_text_cache_follows_prompt_changes(own_detector, monkeypatch):
    det = own_detector
    images = make_images(1, 224, seed=6)
    before = det.predict(images)
    calls = _count_text_encodings(det, monkeypatch)
    with torch.no_grad():
        det.prompts.ctx_anomaly.mul_(1.5)  # in place, as an optimiser step does
    changed = det.predict(images)
    assert len(calls) == 3
    assert (changed.image_scores - before.image_scores).abs().max() > 1e-4
    with torch.no_grad():
        det.prompts.ctx_anomaly.div_(1.5)
    again = det.predict(images)
    assert len(calls) == 6
    assert torch.allclose(again.image_scores, before.image_scores, atol=1e-6)


def test_text_cache_follows_dtype_and_device(own_detector, monkeypatch):
    det = own_detector
    images = make_images(1, 224, seed=7)
    ref = det.predict(images)
    calls = _count_text_encodings(det, monkeypatch)
    det.double()  # _apply: the cache is dropped and rebuilt from the float64 prompts
    out = det.predict(images)
    assert len(calls) == 3 and det.prompts.ctx_normal.dtype == torch.float64
    assert torch.allclose(out.image_scores, ref.image_scores, atol=1e-5)
    if torch.cuda.is_available():
        det.float().to("cuda")
        assert det.text_features().unit["fused"].device.type == "cuda"


def test_predict_keeps_train_mode_and_numbers(own_detector):
    det = own_detector
    images = make_images(2, 224, seed=9)
    ref = det.predict(images)
    det.train()
    out = det.predict(images)
    assert det.training and det.prompts.training and not det.backbone.training
    assert torch.equal(out.image_scores, ref.image_scores) and torch.equal(out.anomaly_maps, ref.anomaly_maps)


def test_forward_is_differentiable_and_predict_is_its_inference(own_detector):
    det = own_detector
    images = make_images(2, 224, seed=10)
    out = det(images)
    logits = out.image_logits(det.config.temperature)
    assert logits["fused"].shape == (2, 2) and not out.image_features.requires_grad
    logits["generic"][:, 1].sum().backward()
    assert det.prompts.ctx_anomaly.grad.abs().sum() > 0
    with torch.no_grad():
        scores = torch.stack([logits[k].detach().softmax(-1)[:, 1] for k in TEXT_SETS]).mean(0)
    assert torch.allclose(scores, det.predict(images).image_scores, atol=1e-6)


def test_bf16_close_to_fp32(own_detector):
    det = own_detector
    images = make_images(2, 224, seed=4)
    ref = det.predict(images)
    det.config = det.config.replace(precision="bf16")
    low = det.predict(images)
    assert (low.anomaly_maps - ref.anomaly_maps).abs().max() < 5e-2
    assert (low.image_scores - ref.image_scores).abs().max() < 5e-2
    assert (low.anomaly_maps - ref.anomaly_maps).abs().max() > 0  # bf16 really ran
