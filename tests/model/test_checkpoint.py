"""Prompt checkpoints: our safetensors format and the authors' released .pth format."""

import os

import pytest
import torch

import s2swclip
from s2swclip.errors import S2SWError
from s2swclip.model.checkpoint import load_prompts, save_prompts
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
    # the checkpoint's fixed buffers are used, as the released code's load_state_dict does
    sd["token_suffix_pos_emo"] = sd["token_suffix_pos_emo"] + 0.5
    torch.save({"prompt_learner": sd}, path)
    det2 = s2swclip.load_detector("S2SW-Tiny-24L", None, str(path), image_size=224)
    assert torch.equal(det2.prompts.contrastive_suffix[0], sd["token_suffix_pos_emo"].reshape(62, W))
    assert (det2.predict(images).image_scores - det.predict(images).image_scores).abs().max() > 0


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
    with pytest.raises(S2SWError, match="cannot read"):
        load_prompts(path)


def test_structural_options_travel_with_the_checkpoint(tmp_path, tiny_detector):
    path = tmp_path / "p.safetensors"
    cfg = tiny_detector.config.replace(layer_aliasing=False, feature_layers=(3, 24)).to_dict()
    save_prompts(path, tiny_detector.prompts, {"detector_config": cfg})
    det = s2swclip.load_detector("S2SW-Tiny-24L", None, str(path), image_size=224)
    assert det.config.layer_aliasing is False and det.config.feature_layers == (3, 24)
    det = s2swclip.load_detector("S2SW-Tiny-24L", None, str(path), image_size=224, layer_aliasing=True)
    assert det.config.layer_aliasing is True  # an explicit option wins
