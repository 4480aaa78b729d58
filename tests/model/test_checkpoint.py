"""Prompt checkpoints: our safetensors format and the authors' released .pth format."""

import json
import os
import re

import pytest
import torch

import s2swclip
from s2swclip.errors import S2SWError
from s2swclip.model.checkpoint import FORMAT_TAG, load_prompts, save_prompts
from s2swclip.model.prompts import DEFAULT_VOCABULARY, tokenize

from helpers import make_images

W = 64  # text width of the tiny config


def _authors_state_dict(det, seed=0):
    """A state dict with the released AnomalyCLIP_PromptLearner's key names and shapes."""
    g = torch.Generator().manual_seed(seed)
    sd = {
        "ctx_pos": torch.randn(1, 1, 14, W, generator=g) * 0.3,
        "ctx_neg": torch.randn(1, 1, 14, W, generator=g) * 0.3,
    }
    for k in range(8):
        sd[f"compound_prompts_text.{k}"] = torch.randn(4, W, generator=g) * 0.3
        sd[f"compound_prompt_projections.{k}.weight"] = torch.randn(896, W, generator=g)
        sd[f"compound_prompt_projections.{k}.bias"] = torch.randn(896, generator=g)
    emb = det.backbone.token_embedding
    for family, suffix in (("generic", ""), ("contrastive", "_emo"), ("referenced", "_class")):
        for row, state in ((0, "pos"), (1, "neg")):
            text = " ".join(["X"] * 14) + " " + DEFAULT_VOCABULARY[family][row] + "."
            tok = tokenize([text], 77)
            e = emb(tok).detach()
            sd[f"token_prefix_{state}{suffix}"] = e[:, :1].reshape(1, 1, 1, W)
            sd[f"token_suffix_{state}{suffix}"] = e[:, 15:].reshape(1, 1, 62, W)
            sd[f"tokenized_prompts_{state}{suffix}"] = tok.int().reshape(1, 1, 77)
    return sd


def test_authors_checkpoint_loads_and_is_used(tmp_path, tiny_detector):
    sd = _authors_state_dict(tiny_detector)
    path = tmp_path / "epoch_16.pth"
    torch.save({"prompt_learner": sd}, path)
    det = s2swclip.load_detector("S2SW-Tiny-24L", None, str(path), image_size=224)
    assert det.provenance["prompts_format"] == "authors"
    assert torch.equal(det.prompts.ctx_normal, sd["ctx_pos"].reshape(14, W))
    assert torch.equal(det.prompts.ctx_anomaly, sd["ctx_neg"].reshape(14, W))
    assert torch.equal(det.prompts.deep_prompts[3], sd["compound_prompts_text.3"])
    base = s2swclip.load_detector("S2SW-Tiny-24L", None, None, image_size=224)
    images = make_images(1, 224)
    assert (det.predict(images).anomaly_maps - base.predict(images).anomaly_maps).abs().max() > 1e-4
    # the checkpoint's fixed buffers are used, as the released code's load_state_dict does. The
    # change is random per channel: a constant would be removed by every LayerNorm (nothing moves in
    # exact arithmetic, only rounding noise would), random values change the text features.
    g = torch.Generator().manual_seed(1)
    sd["token_suffix_pos_emo"] = sd["token_suffix_pos_emo"] + torch.randn(sd["token_suffix_pos_emo"].shape,
                                                                          generator=g)
    torch.save({"prompt_learner": sd}, path)
    det2 = s2swclip.load_detector("S2SW-Tiny-24L", None, str(path), image_size=224)
    assert torch.equal(det2.prompts.contrastive_suffix[0], sd["token_suffix_pos_emo"].reshape(62, W))
    with torch.no_grad():
        t1, t2 = det.text_features(), det2.text_features()
    # the contrastive family's normal prompt moved (unit vectors: a real change, not noise) ...
    assert (t2.unit["contrastive"][0] - t1.unit["contrastive"][0]).abs().max() > 1e-2
    # ... the generic and referenced families did not (their buffers are unchanged)
    for k in ("generic", "referenced"):
        torch.testing.assert_close(t2.unit[k], t1.unit[k], rtol=0, atol=1e-6)
    # ... and so did the image score, which averages the contrastive set with the others
    assert (det2.predict(images).image_scores - det.predict(images).image_scores).abs().max() > 1e-3


def test_own_format_roundtrip(tmp_path, tiny_detector):
    path = tmp_path / "p.safetensors"
    save_prompts(path, tiny_detector.prompts, {"backbone": "S2SW-Tiny-24L", "epoch": 3})
    assert os.listdir(tmp_path) == ["p.safetensors"]  # atomic: no temporary left behind
    ckpt = load_prompts(path)
    assert ckpt.kind == "s2swclip" and ckpt.meta["epoch"] == 3 and ckpt.config["n_ctx"] == 14
    det = s2swclip.load_detector("S2SW-Tiny-24L", None, str(path), image_size=224)
    images = make_images(2, 224, seed=9)
    a, b = det.predict(images), tiny_detector.predict(images)
    assert torch.equal(a.image_scores, b.image_scores)
    assert torch.equal(a.anomaly_maps, b.anomaly_maps)


def test_custom_vocabulary_is_stored_and_restored(tmp_path):
    from s2swclip.model.prompts import PromptLearner

    det = s2swclip.load_detector("S2SW-Tiny-24L", None, None, image_size=224)
    vocab = dict(DEFAULT_VOCABULARY, generic=("surface", "defective surface"))
    learner = PromptLearner(det.backbone.token_embedding, 64, vocabulary=vocab)
    path = tmp_path / "v.safetensors"
    save_prompts(path, learner)
    det2 = s2swclip.load_detector("S2SW-Tiny-24L", None, str(path), image_size=224)
    assert det2.prompts.vocabulary["generic"] == ("surface", "defective surface")
    assert torch.equal(det2.prompts.generic_suffix, learner.generic_suffix)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"PK\x03\x04garbage"])
def test_corrupt_checkpoint_is_a_clear_error(tmp_path, content):
    path = tmp_path / "bad.pth"
    path.write_bytes(content)
    with pytest.raises(S2SWError, match="bad.pth"):
        load_prompts(path)


def test_wrong_checkpoint_kind_is_a_clear_error(tmp_path):
    path = tmp_path / "weights.pth"
    torch.save({"visual.proj": torch.zeros(2, 2)}, path)
    with pytest.raises(S2SWError, match="not a prompt checkpoint"):
        load_prompts(path)
    with pytest.raises(S2SWError, match="not found"):
        load_prompts(tmp_path / "missing.safetensors")


def test_checkpoint_for_another_width_is_a_clear_error(tmp_path, tiny_detector):
    sd = {k: v for k, v in _authors_state_dict(tiny_detector).items() if not k.startswith("token")
          and not k.startswith("tokenized")}  # a consistent checkpoint of text width 32
    sd["ctx_pos"] = torch.zeros(1, 1, 14, 32)
    sd["ctx_neg"] = torch.zeros(1, 1, 14, 32)
    sd.update({f"compound_prompts_text.{k}": torch.zeros(4, 32) for k in range(8)})
    path = tmp_path / "other.pth"
    torch.save({"prompt_learner": sd}, path)
    with pytest.raises(S2SWError, match="does not fit"):
        s2swclip.load_detector("S2SW-Tiny-24L", None, str(path), image_size=224)


def test_pickled_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = tmp_path / "evil.pth"
    torch.save({"prompt_learner": {"ctx_pos": Evil()}}, path)
    with pytest.raises(S2SWError, match="cannot read") as e:
        load_prompts(path)
    _assert_one_clear_line(e.value, path, "system, which is not tensor data")


def test_structural_options_travel_with_the_checkpoint(tmp_path, tiny_detector):
    path = tmp_path / "p.safetensors"
    cfg = tiny_detector.config.replace(layer_aliasing=False, feature_layers=(3, 24)).to_dict()
    save_prompts(path, tiny_detector.prompts, {"detector_config": cfg})
    det = s2swclip.load_detector("S2SW-Tiny-24L", None, str(path), image_size=224)
    assert det.config.layer_aliasing is False and det.config.feature_layers == (3, 24)
    det = s2swclip.load_detector("S2SW-Tiny-24L", None, str(path), image_size=224, layer_aliasing=True)
    assert det.config.layer_aliasing is True  # an explicit option wins


# ------------------------------------------------------------------ malformed checkpoints
def _assert_one_clear_line(err, path, reason):
    msg = str(err)
    assert "\n" not in msg and "weights_only" not in msg, msg
    assert str(path) in msg and re.search(reason, msg), msg


def _save_authors(path, sd):
    torch.save({"prompt_learner": sd}, path)
    return path


def _without(sd, *keys):
    return {k: v for k, v in sd.items() if k not in keys}


W14 = (1, 1, 14, W)
AUTHORS_CASES = [
    (lambda sd: dict(sd, ctx_pos=[[0.1] * W] * 14), "ctx_pos is not a tensor"),
    (lambda sd: dict(sd, ctx_neg="x"), "ctx_neg is not a tensor"),
    (lambda sd: dict(sd, ctx_pos=torch.zeros(W14, dtype=torch.int64)), "ctx_pos has dtype torch.int64"),
    (lambda sd: dict(sd, ctx_neg=torch.full(W14, float("nan"))), "ctx_neg holds NaN"),
    (lambda sd: dict(sd, ctx_pos=torch.zeros(14, W)), "ctx_pos has 2 dimensions"),
    (lambda sd: dict(sd, ctx_neg=torch.zeros(1, 1, 13, W)), r"must both have shape \[1, 1, n_ctx, W\]"),
    (lambda sd: dict(sd, ctx_pos=torch.zeros(1, 1, 0, W), ctx_neg=torch.zeros(1, 1, 0, W)),
     "n_ctx and the width must be at least 1"),
    (lambda sd: dict(sd, **{"compound_prompts_text.x": torch.zeros(4, W)}), "unknown deep-prompt key"),
    (lambda sd: dict(sd, **{"compound_prompts_text.01": torch.zeros(4, W)}), "unknown deep-prompt key"),
    (lambda sd: _without(sd, "compound_prompts_text.3"), "without gaps"),
    (lambda sd: dict(sd, **{"compound_prompts_text.2": torch.zeros(3, W)}), "unequal shapes"),
    (lambda sd: dict(sd, **{"compound_prompts_text.2": torch.zeros(4, W, dtype=torch.int32)}),
     "compound_prompts_text.2 has dtype"),
    (lambda sd: dict(sd, **{f"compound_prompts_text.{k}": torch.zeros(4, 32) for k in range(8)}),
     r"expected \[t, 64\]"),
    (lambda sd: dict(sd, **{f"compound_prompts_text.{k}": torch.zeros(15, W) for k in range(8)}),
     "t <= n_ctx = 14"),
    (lambda sd: _without(sd, "token_suffix_neg_emo"), "contrastive family's fixed buffers are incomplete"),
    (lambda sd: dict(sd, token_prefix_pos=sd["token_prefix_pos"].reshape(1, 1, W)[:, :, :32]),
     "token_prefix_pos/token_prefix_neg must both have shape"),
    (lambda sd: dict(sd, tokenized_prompts_neg_class=sd["tokenized_prompts_neg_class"].float()),
     "tokenized_prompts_neg_class must be a .* tensor of token ids"),
    (lambda sd: {**sd, 5: torch.zeros(1)}, "key that is not a name"),
]


@pytest.mark.parametrize("mutate, reason", AUTHORS_CASES)
def test_malformed_authors_checkpoint_is_refused(tmp_path, tiny_detector, mutate, reason):
    path = _save_authors(tmp_path / "epoch_16.pth", mutate(_authors_state_dict(tiny_detector)))
    with pytest.raises(S2SWError) as e:
        load_prompts(path)
    _assert_one_clear_line(e.value, path, reason)


def _save_ours(path, det, tensors=None, config=None, meta=None, metadata=None):
    """Our format, from ``det``'s prompts with ``tensors``/``config``/``meta``/raw ``metadata`` changed."""
    from safetensors.torch import save_file

    t = {k: v.detach().clone().contiguous() for k, v in det.prompts.parameter_tensors().items()}
    t.update(tensors or {})
    t = {k: v for k, v in t.items() if v is not None}
    md = {"format": FORMAT_TAG, "format_version": "1",
          "config": json.dumps({**det.prompts.config(), **(config or {})}), "meta": json.dumps(meta or {})}
    md.update(metadata or {})
    save_file(t, str(path), metadata=md)
    return path


OURS_CASES = [
    (dict(tensors={"ctx_normal": torch.zeros(14, W, dtype=torch.int32)}), "ctx_normal has dtype torch.int32"),
    (dict(tensors={"deep_prompts": torch.full((8, 4, W), float("inf"))}), "deep_prompts holds NaN or infinite"),
    (dict(tensors={"ctx_anomaly": torch.zeros(13, W)}), "differ in shape"),
    (dict(tensors={"ctx_anomaly": None}), "lacks the tensor.s. ctx_anomaly"),
    (dict(tensors={"extra": torch.zeros(1)}), "unexpected tensor.s. 'extra'"),
    (dict(config={"n_ctx": 0}), "config n_ctx must be an integer >= 1, got 0"),
    (dict(config={"n_ctx": -3}), "n_ctx must be an integer >= 1, got -3"),
    (dict(config={"n_ctx": "14"}), "n_ctx must be an integer >= 1, got '14'"),
    (dict(config={"n_ctx": 14.0}), "n_ctx must be an integer"),
    (dict(config={"n_ctx": True}), "n_ctx must be an integer"),
    (dict(config={"n_ctx": 13}), r"ctx_normal has shape \(14, 64\), but its config"),
    (dict(config={"depth": 4}), r"deep_prompts has shape \(8, 4, 64\), but its config"),
    (dict(config={"deep_tokens": -1}), "deep_tokens must be an integer >= 0"),
    (dict(config={"vocabulary": {"generic": ["a", "b"]}}), "vocabulary must map each of"),
    (dict(config={"vocabulary": dict(DEFAULT_VOCABULARY, generic=["a", 3])}), "vocabulary must map"),
    (dict(config={"vocabulary": dict(DEFAULT_VOCABULARY, generic=["a"])}), "vocabulary must map"),
    (dict(metadata={"config": "[1, 2]"}), "'config' metadata is not a JSON object"),
    (dict(metadata={"config": "{not json"}), "'config' metadata is not valid JSON"),
    (dict(metadata={"meta": "[1, 2]"}), "'meta' metadata is not a JSON object"),
    (dict(metadata={"meta": '"text"'}), "'meta' metadata is not a JSON object"),
    (dict(metadata={"format_version": "2"}), "format version '2'"),
    (dict(meta={"backbone": 5}), "recorded backbone is not a name"),
    (dict(meta={"detector_config": [6, 12]}), "detector_config is not a mapping"),
    (dict(meta={"detector_config": None}), "detector_config is not a mapping"),
    (dict(meta={"detector_config": {"feature_layers": []}}), "feature_layers must be a non-empty list"),
    (dict(meta={"detector_config": {"feature_layers": [6, 0]}}), "feature_layers must be"),
    (dict(meta={"detector_config": {"feature_layers": "6,12"}}), "feature_layers must be"),
    (dict(meta={"detector_config": {"feature_layers": [6, True]}}), "feature_layers must be"),
    (dict(meta={"detector_config": {"feature_layers": [6.0]}}), "feature_layers must be"),
    (dict(meta={"detector_config": {"dpam_layers": -1}}), "dpam_layers must be an integer >= 0"),
    (dict(meta={"detector_config": {"dpam_layers": 1.5}}), "dpam_layers must be an integer"),
    (dict(meta={"detector_config": {"layer_aliasing": "false"}}), "layer_aliasing must be true or false"),
    (dict(meta={"detector_config": {"round_deep_prompts": 1}}), "round_deep_prompts must be true or false"),
    (dict(meta={"detector_config": {"global_ln_post": None}}), "global_ln_post must be true or false"),
]


@pytest.mark.parametrize("change, reason", OURS_CASES)
def test_malformed_own_checkpoint_is_refused(tmp_path, tiny_detector, change, reason):
    path = _save_ours(tmp_path / "p.safetensors", tiny_detector, **change)
    with pytest.raises(S2SWError) as e:
        load_prompts(path)
    _assert_one_clear_line(e.value, path, reason)


def test_valid_recorded_options_and_vocabulary_are_accepted(tmp_path, tiny_detector):
    recorded = {"feature_layers": [3, 24], "dpam_layers": 0, "layer_aliasing": False,
                "round_deep_prompts": False, "global_ln_post": True, "sigma": 2.0}
    path = _save_ours(tmp_path / "p.safetensors", tiny_detector, meta={"detector_config": recorded})
    det = s2swclip.load_detector("S2SW-Tiny-24L", None, str(path), image_size=224)
    assert det.config.feature_layers == (3, 24) and det.config.dpam_layers == 0
    assert (det.config.layer_aliasing, det.config.round_deep_prompts, det.config.global_ln_post) == (False, False, True)
    assert det.config.sigma == 4.0  # only the structural options are inherited


def test_every_inherited_option_is_validated():
    from s2swclip.model.factory import STRUCTURAL_OPTIONS
    from s2swclip.model.checkpoint import RECORDED_OPTION_CHECKS

    assert set(RECORDED_OPTION_CHECKS) == set(STRUCTURAL_OPTIONS)


def test_prompts_too_long_for_the_text_context_are_a_clear_error(tmp_path):
    """A consistent checkpoint whose 74 context tokens leave no room for CLIP's 77-token text."""
    from safetensors.torch import save_file

    path = tmp_path / "long.safetensors"
    config = {"n_ctx": 74, "depth": 1, "deep_tokens": 0,
              "vocabulary": {f: list(v) for f, v in DEFAULT_VOCABULARY.items()}}
    save_file({"ctx_normal": torch.zeros(74, W), "ctx_anomaly": torch.zeros(74, W),
               "deep_prompts": torch.zeros(0, 0, W)}, str(path),
              metadata={"format": FORMAT_TAG, "format_version": "1", "config": json.dumps(config)})
    assert load_prompts(path).config["n_ctx"] == 74  # a well-formed file...
    with pytest.raises(S2SWError) as e:  # ...that does not fit the backbone
        s2swclip.load_detector("S2SW-Tiny-24L", None, str(path), image_size=224)
    _assert_one_clear_line(e.value, path, "cannot be used with backbone S2SW-Tiny-24L: .*too long")


def test_torchscript_archive_is_not_a_prompt_checkpoint(tmp_path):
    from untrusted_files import save_hostile_archive

    path, marker = tmp_path / "hostile.pth", tmp_path / "marker"
    save_hostile_archive(path, marker)
    with pytest.raises(S2SWError) as e:
        load_prompts(path)
    _assert_one_clear_line(e.value, path, "is a TorchScript archive .* not a prompt checkpoint")
    assert not marker.exists()
