"""Few-normal-shot mode (memory bank, coreset, nearest-neighbour map, fusion) against plain
transcriptions, and the references file as untrusted input."""

import copy
import json
import math

import numpy as np
import pytest
import scipy.ndimage
import torch

import s2swclip
from s2swclip.errors import S2SWError
from s2swclip.model.references import (bank_tokens, coreset_size, few_shot_token_map, greedy_coreset,
                                       nearest_similarity)
from helpers import make_images

LAYERS = (6, 12, 18, 24)


# ------------------------------------------------------------------------ NumPy transcriptions
def _np_plain_features(det, images, layers):
    """Plain-stream features computed independently: open_clip's own VisionTransformer forward
    (its blocks, its attention) with hooks on the blocks, then ln_post and proj in NumPy."""
    visual = det.backbone.clip.visual
    captured = {}
    hooks = [visual.transformer.resblocks[layer - 1].register_forward_hook(
        lambda mod, inp, out, layer=layer: captured.__setitem__(layer, out)) for layer in layers]
    try:
        with torch.no_grad():
            visual(images)
    finally:
        for h in hooks:
            h.remove()
    ln_w, ln_b = visual.ln_post.weight.double().numpy(), visual.ln_post.bias.double().numpy()
    proj = visual.proj.double().numpy()
    out = []
    for layer in layers:
        x = captured[layer].double().numpy()
        if x.shape[0] != images.shape[0]:  # sequence-first layout
            x = x.transpose(1, 0, 2)
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        x = (x - mu) / np.sqrt(var + visual.ln_post.eps) * ln_w + ln_b
        out.append(x @ proj)  # [B, N, C]
    return out


def _np_few_shot_tokens(query_feats, ref_feats):
    """Loop over query patches: per layer 0.5 * (1 - max cosine similarity to the bank), mean over layers."""
    b, n = query_feats[0].shape[:2]
    total = np.zeros((b, n - 1))
    for q, r in zip(query_feats, ref_feats):
        bank = r[:, 1:].reshape(-1, r.shape[-1])
        bank = bank / np.linalg.norm(bank, axis=1, keepdims=True)
        for i in range(b):
            for t in range(1, n):
                v = q[i, t] / np.linalg.norm(q[i, t])
                total[i, t - 1] += 0.5 * (1 - np.max(bank @ v))
    return total / len(query_feats)


def _np_map(tokens, size, np_bilinear):
    g = int(round(math.sqrt(tokens.shape[-1])))
    maps = np_bilinear(tokens.reshape(-1, g, g), size, size)
    return np.stack([scipy.ndimage.gaussian_filter(m, sigma=4, mode="reflect", truncate=4.0) for m in maps])


def _np_greedy_coreset(x, n):
    chosen = [0]
    nearest = ((x - x[0]) ** 2).sum(1)
    while len(chosen) < n:
        j = int(np.argmax(nearest))
        chosen.append(j)
        nearest = np.minimum(nearest, ((x - x[j]) ** 2).sum(1))
    return chosen


# ---------------------------------------------------------------------------------- the map
def test_few_shot_map_matches_numpy_transcription(own_detector, np_bilinear):
    det = own_detector
    size = 336  # the tiny backbone's native grid: open_clip's own forward runs unchanged
    refs, queries = make_images(2, size, seed=11), make_images(2, size, seed=12)
    det.set_references(refs)
    out = det.predict(queries)
    ref_feats = _np_plain_features(det, refs, LAYERS)
    query_feats = _np_plain_features(det, queries, LAYERS)
    expected = _np_map(_np_few_shot_tokens(query_feats, ref_feats), size, np_bilinear)
    got = out.few_shot_maps.double().numpy()
    assert got.shape == (2, size, size)
    assert np.abs(got - expected).max() < 2e-5
    assert expected.max() > 0.05  # a real signal, not a trivially small map


def test_token_map_function_matches_loop():
    g = torch.Generator().manual_seed(3)
    feats = [torch.randn(2, 10, 6, generator=g, dtype=torch.float64) for _ in range(3)]
    refs = [torch.randn(3, 10, 6, generator=g, dtype=torch.float64) for _ in range(3)]
    got = few_shot_token_map(feats, [bank_tokens(r) for r in refs])
    expected = _np_few_shot_tokens([f.numpy() for f in feats], [r.numpy() for r in refs])
    assert np.abs(got.double().numpy() - expected).max() < 1e-6


def test_query_equal_to_reference_gives_zero(own_detector):
    det = own_detector
    refs = make_images(3, 224, seed=13)
    det.set_references(refs)
    out = det.predict(refs[1:3])
    assert out.few_shot_maps.abs().max() < 1e-6
    det.config = det.config.replace(few_shot_weight=1.0)
    assert det.predict(refs[:2]).image_scores.abs().max() < 1e-6  # few-shot score = max of the map
    assert det.predict(make_images(1, 224, seed=14)).image_scores.item() > 0.05


def test_pasted_foreign_patch_is_where_the_map_peaks(own_detector):
    det = own_detector
    refs = make_images(2, 224, seed=15)
    det.set_references(refs)
    query = refs[:1].clone()
    rows, cols = slice(112, 168), slice(28, 84)  # a 4x4-patch square
    query[:, :, rows, cols] = make_images(1, 224, seed=99)[:, :, rows, cols] * 2.0
    m = det.predict(query).few_shot_maps[0]
    r, c = divmod(int(m.argmax()), m.shape[1])
    assert rows.start <= r < rows.stop and cols.start <= c < cols.stop, (r, c)
    inside = m[rows, cols].mean()
    outside = torch.cat([m[:100].flatten(), m[180:].flatten()]).mean()
    assert inside > 3 * outside


@pytest.mark.parametrize("w", [0.0, 0.3, 0.5])
def test_fusion_formulas(own_detector, w):
    det = own_detector
    images, refs = make_images(2, 224, seed=16), make_images(2, 224, seed=17)
    zero_shot = det.predict(images)
    det.config = det.config.replace(few_shot_weight=w)
    det.set_references(refs)
    fused = det.predict(images)
    fs = fused.few_shot_maps
    assert torch.equal(fused.anomaly_maps, (1 - w) * zero_shot.anomaly_maps + w * fs)
    assert torch.equal(fused.image_scores, (1 - w) * zero_shot.image_scores + w * fs.flatten(1).amax(1))


@pytest.mark.parametrize("w", [0.0, 0.5, 1.0])
def test_map_scale_bounds_the_fused_map(own_detector, w):
    """map_scale: L layers without references, (1 - w) * L + w with them; each term's map is
    within its bound, so the fused map divided by map_scale is on the scores' [0, 1] scale."""
    det = own_detector
    layers = len(det.config.feature_layers)
    assert det.map_scale == layers
    images = make_images(2, 224, seed=20)
    zero_shot = det.predict(images).anomaly_maps
    assert 0 <= float(zero_shot.min()) and float(zero_shot.max()) <= layers
    det.config = det.config.replace(few_shot_weight=w)
    det.set_references(make_images(2, 224, seed=21))
    assert det.map_scale == pytest.approx((1 - w) * layers + w)
    out = det.predict(images)
    assert 0 <= float(out.few_shot_maps.min()) and float(out.few_shot_maps.max()) <= 1
    assert float(out.anomaly_maps.max()) <= det.map_scale
    det.clear_references()
    assert det.map_scale == layers


def test_without_references_predict_is_unchanged(own_detector):
    det = own_detector
    images = make_images(2, 224, seed=18)
    before = det.predict(images)
    assert before.few_shot_maps is None and det.num_references == 0
    det.set_references(make_images(3, 224, seed=19))
    assert det.num_references == 3
    assert det.predict(images).few_shot_maps is not None
    det.clear_references()
    after = det.predict(images)
    assert det.num_references == 0 and after.few_shot_maps is None
    assert torch.equal(after.image_scores, before.image_scores)
    assert torch.equal(after.anomaly_maps, before.anomaly_maps)
    assert not [k for k in det.state_dict() if k.startswith("references")]


def test_weight_one_needs_no_prompts():
    """w = 1 with untrained prompts: two detectors whose prompts differ give the same results."""
    refs, images = make_images(2, 224, seed=20), make_images(2, 224, seed=21)
    outs = []
    for seed in (1, 2):
        det = s2swclip.load_detector("S2SW-Tiny-24L", None, None, image_size=224, seed=0, untrained_ok=True,
                                     few_shot_weight=1.0)
        with torch.no_grad():
            det.prompts.ctx_anomaly.copy_(torch.randn(det.prompts.ctx_anomaly.shape,
                                                      generator=torch.Generator().manual_seed(seed)))
        det.set_references(refs)
        outs.append(det.predict(images))
    assert torch.equal(outs[0].image_scores, outs[1].image_scores)
    assert torch.equal(outs[0].anomaly_maps, outs[1].anomaly_maps)
    assert torch.equal(outs[0].anomaly_maps, outs[0].few_shot_maps)


def test_one_vision_pass_per_predict(own_detector):
    det = own_detector
    det.set_references(make_images(2, 224, seed=22))
    calls = []
    hook = det.backbone.clip.visual.conv1.register_forward_hook(lambda *a: calls.append(1))
    try:
        det.predict(make_images(3, 224, seed=23))
    finally:
        hook.remove()
    assert len(calls) == 1


def test_dpam_stream_option(own_detector):
    """The DPAM stream at the last layer is the (aliased) zero-shot feature; earlier layers are
    each layer's own DPAM stream."""
    det = own_detector
    images = make_images(1, 224, seed=24)
    glob, patches, extra = det.encode_image(images, (12, 24), "dpam")
    assert torch.equal(extra[1], patches[-1])
    assert (extra[0] - extra[1]).abs().max() > 1e-3
    _, _, plain = det.encode_image(images, (12, 24), "plain")
    assert (plain[1] - extra[1]).abs().max() > 1e-3
    det.config = det.config.replace(few_shot_stream="dpam", few_shot_layers=(12, 24))
    det.set_references(images)
    assert det.references.layers == (12, 24) and det.references.stream == "dpam"
    assert det.predict(images).few_shot_maps.abs().max() < 1e-6


def test_bank_size_and_memory(own_detector):
    det = own_detector
    det.set_references(make_images(3, 224, seed=25))
    rows = 3 * (224 // 14) ** 2
    assert [b.shape for b in det.references.banks] == [(rows, 768)] * 4
    assert det.references.nbytes == 4 * rows * 768 * 4
    norms = torch.cat(det.references.banks).norm(dim=1)
    assert (norms - 1).abs().max() < 1e-5


# ------------------------------------------------------------------------------ search, coreset
def test_nearest_similarity_is_exact_in_chunks():
    g = torch.Generator().manual_seed(4)
    q, bank = torch.randn(37, 5, generator=g), torch.randn(23, 5, generator=g)
    full = np.array([max(float(np.dot(a, b)) for b in bank.double().numpy()) for a in q.double().numpy()])
    for max_elements in (1, 7, 23, 100, 10_000):  # exact up to float32 rounding of the products
        got = nearest_similarity(q, bank, max_elements=max_elements)
        assert got.dtype == torch.float32 and np.abs(got.double().numpy() - full).max() < 1e-5


def test_greedy_coreset_matches_numpy():
    x = np.random.default_rng(5).normal(size=(60, 8))
    got = greedy_coreset(torch.from_numpy(x), 12).tolist()
    assert got == _np_greedy_coreset(x, 12)
    assert len(set(got)) == 12


def test_greedy_coreset_with_projection():
    x = torch.nn.functional.normalize(torch.randn(500, 64, generator=torch.Generator().manual_seed(6)), dim=1)
    a = greedy_coreset(x, 50, projection_dim=16)
    assert torch.equal(a, greedy_coreset(x, 50, projection_dim=16))  # reproducible
    assert len(set(a.tolist())) == 50
    assert sorted(greedy_coreset(x, 500, projection_dim=16).tolist()) == list(range(500))


def test_coreset_size():
    assert coreset_size(1000, 0.1) == 100 and coreset_size(1001, 0.1) == 101
    assert coreset_size(5, 0.01) == 1 and coreset_size(7, 1.0) == 7
    with pytest.raises(ValueError):
        coreset_size(10, 0)


def test_coreset_fraction_one_keeps_the_exact_neighbour(own_detector):
    det = own_detector
    refs, images = make_images(2, 224, seed=26), make_images(2, 224, seed=27)
    det.set_references(refs)
    exact = det.predict(images).few_shot_maps
    full_banks = [b.clone() for b in det.references.banks]
    det.config = det.config.replace(coreset=1.0)
    det.set_references(refs)
    for a, b in zip(full_banks, det.references.banks):
        assert a.shape == b.shape
        assert torch.equal(torch.sort(a, dim=0).values, torch.sort(b, dim=0).values)  # the same rows
    assert (det.predict(images).few_shot_maps - exact).abs().max() < 1e-6


def test_coreset_bounds_the_bank_and_only_raises_distances(own_detector):
    det = own_detector
    refs, images = make_images(3, 224, seed=28), make_images(1, 224, seed=29)
    det.set_references(refs)
    _, _, feats = det.encode_image(images, LAYERS)
    exact = det.references.token_map(feats)
    det.config = det.config.replace(coreset=0.25)
    det.set_references(refs)
    rows = math.ceil(0.25 * 3 * 16 * 16)
    assert [b.shape[0] for b in det.references.banks] == [rows] * 4
    sub = det.references.token_map(feats)
    assert (sub >= exact - 1e-6).all()  # a subset's nearest neighbour is never nearer
    assert (sub - exact).mean() < 0.05


# ------------------------------------------------------------------------- precision, devices
def test_bank_follows_the_module_dtype(own_detector):
    det = own_detector
    refs = make_images(2, 112, seed=30)
    det.set_references(refs)
    det.double()
    assert all(b.dtype == torch.float64 for b in det.references.banks)
    out = det.predict(refs[:1])
    assert out.few_shot_maps.abs().max() < 1e-6


def test_bf16_bank(own_detector):
    det = own_detector
    refs, images = make_images(2, 112, seed=31), make_images(1, 112, seed=32)
    det.set_references(refs)
    ref = det.predict(images).few_shot_maps
    det.config = det.config.replace(precision="bf16")
    det.set_references(refs)
    assert all(b.dtype == torch.bfloat16 for b in det.references.banks)
    assert det.references.nbytes == 2 * 2 * 64 * 768 * 4
    low = det.predict(images).few_shot_maps
    assert 0 < (low - ref).abs().max() < 3e-2


def test_bad_inputs(own_detector):
    det = own_detector
    with pytest.raises(ValueError):
        det.set_references(torch.zeros(2, 3, 224))
    det.set_references(make_images(1, 224))
    with pytest.raises(ValueError, match="224 px"):
        det.predict(make_images(1, 238))


@pytest.mark.parametrize("option, value, needle", [
    ("few_shot_weight", 1.5, "few_shot_weight"), ("few_shot_layers", (0, 6), "few_shot_layers"),
    ("few_shot_layers", (6, 30), "1..24"), ("coreset", 0.0, "coreset"), ("coreset", 2, "coreset"),
    ("few_shot_stream", "x", "few_shot_stream")])
def test_load_detector_checks_few_shot_options(option, value, needle):
    with pytest.raises(S2SWError, match=needle):
        s2swclip.load_detector("S2SW-Tiny-24L", None, None, image_size=224, untrained_ok=True, **{option: value})


# ------------------------------------------------------------------------------- save / load
@pytest.fixture(scope="module")
def _bank_file(tiny_detector, tmp_path_factory):
    det = copy.deepcopy(tiny_detector)
    det.config = det.config.replace(coreset=0.5)
    det.set_references(make_images(2, 224, seed=33))
    path = tmp_path_factory.mktemp("bank") / "refs.safetensors"
    det.save_references(path)
    return det, path


@pytest.fixture
def saved_bank(_bank_file):
    """A detector with references (coreset 0.5) and the file they were saved to."""
    det, path = _bank_file
    return copy.deepcopy(det), path


def test_save_load_round_trip(saved_bank):
    det, path = saved_bank
    images = make_images(2, 224, seed=34)
    expected = det.predict(images)
    other = copy.deepcopy(det)
    other.clear_references()
    other.load_references(path)
    assert other.num_references == 2 and other.references.coreset == 0.5
    for a, b in zip(det.references.banks, other.references.banks):
        assert torch.equal(a, b)
    got = other.predict(images)
    assert torch.equal(got.anomaly_maps, expected.anomaly_maps)
    assert torch.equal(got.image_scores, expected.image_scores)


def test_save_without_references_is_a_user_error(own_detector, tmp_path):
    with pytest.raises(S2SWError, match="no references"):
        own_detector.save_references(tmp_path / "x.safetensors")


def _one_line_error(fn, *needles):
    with pytest.raises(S2SWError) as e:
        fn()
    msg = str(e.value)
    assert "\n" not in msg
    for n in needles:
        assert n in msg, msg
    return msg


def test_load_checks_backbone_size_layers(saved_bank):
    det, path = saved_bank
    other = copy.deepcopy(det)
    other.provenance["backbone"] = "ViT-B-16"
    _one_line_error(lambda: other.load_references(path), "backbone S2SW-Tiny-24L", "ViT-B-16", "rebuild")
    other = copy.deepcopy(det)
    with torch.no_grad():
        other.backbone.clip.visual.conv1.weight.mul_(1.1)
    _one_line_error(lambda: other.load_references(path), "other backbone weights")
    other = copy.deepcopy(det)
    other.config = other.config.replace(image_size=336)
    _one_line_error(lambda: other.load_references(path), "224 px images", "336 px", "matching image_size 224")
    other = copy.deepcopy(det)
    other.config = other.config.replace(few_shot_layers=(12, 24))
    _one_line_error(lambda: other.load_references(path), "layers [6, 12, 18, 24]", "[12, 24]")
    other = copy.deepcopy(det)
    other.config = other.config.replace(few_shot_stream="dpam")
    _one_line_error(lambda: other.load_references(path), "plain stream")


def _rewrite(path, tensors=None, **meta_changes):
    """Write a modified copy of a references file (tensors and/or metadata)."""
    from safetensors import safe_open
    from safetensors.torch import save

    with safe_open(str(path), framework="pt") as f:
        metadata = dict(f.metadata())
        old = {k: f.get_tensor(k) for k in f.keys()}
    metadata.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in meta_changes.items()})
    out = path.with_name("bad.safetensors")
    out.write_bytes(save(old if tensors is None else tensors(old), metadata=metadata))
    return out


@pytest.mark.parametrize("make, needle", [
    (lambda p: p.with_name("missing.safetensors"), "not found"),
    (lambda p: (p.with_name("junk.bin").write_bytes(b"\x00" * 64), p.with_name("junk.bin"))[1], "not a valid safetensors"),
    (lambda p: _rewrite(p, format="s2swclip-prompts"), "not a references file"),
    (lambda p: _rewrite(p, format_version="9"), "format version"),
    (lambda p: _rewrite(p, image_size="{not json"), "not valid JSON"),
    (lambda p: _rewrite(p, image_size=True), "image_size"),
    (lambda p: _rewrite(p, num_references=-1), "num_references"),
    (lambda p: _rewrite(p, layers=[6, 6, 18, 24]), "layers"),
    (lambda p: _rewrite(p, layers=[6, 12, 18, 99]), "layers"),
    (lambda p: _rewrite(p, stream="other"), "stream"),
    (lambda p: _rewrite(p, coreset=1.5), "coreset"),
    (lambda p: _rewrite(p, num_references=1, image_size=112), "expected [32, "),
    # the declared image count must match the tensors' real shapes (up or down, or a coreset)
    (lambda p: _rewrite(p, num_references=1000), "declared num_references does not match"),
    (lambda p: _rewrite(p, num_references=1), "declared num_references does not match"),
    (lambda p: _rewrite(p, coreset=None), "declared num_references does not match"),
    (lambda p: _rewrite(p, lambda t: {**t, "extra": torch.zeros(1)}), "holds tensors"),
    (lambda p: _rewrite(p, lambda t: {**t, "layer_6": t["layer_6"][:, :10].contiguous()}), "shape"),
    (lambda p: _rewrite(p, lambda t: {**t, "layer_6": t["layer_6"].to(torch.int32)}), "dtype"),
    (lambda p: _rewrite(p, lambda t: {**t, "layer_6": t["layer_6"] * 2}), "unit vectors"),
    (lambda p: _rewrite(p, lambda t: {**t, "layer_6": t["layer_6"].index_fill(0, torch.tensor([3]), float("nan"))}),
     "NaN"),
])
def test_load_rejects_bad_files(saved_bank, make, needle):
    det, path = saved_bank
    bad = make(path)
    before = [b.clone() for b in det.references.banks]
    _one_line_error(lambda: det.load_references(bad), needle)
    assert all(torch.equal(a, b) for a, b in zip(before, det.references.banks))  # unchanged
