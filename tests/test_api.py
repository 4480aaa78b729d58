"""load_detector: weights sources, layouts, and clear errors."""

import warnings

import pytest
import torch
from safetensors.torch import save_file

import s2swclip
from s2swclip.errors import S2SWError
from s2swclip.model.weights import create_clip, resolve_model_config

from helpers import make_images


@pytest.fixture(scope="module")
def weights_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("w")
    clip, _ = create_clip("S2SW-Tiny-24L", None, seed=42)
    sd = {k: v.contiguous() for k, v in clip.state_dict().items()}
    torch.save(sd, d / "tiny.pt")
    save_file(sd, str(d / "tiny.safetensors"))
    torch.save({"state_dict": {"module." + k: v for k, v in sd.items()}}, d / "wrapped.pth")
    # the AnomalyCLIP code renames DPAM blocks' attention weights to attn.qkv / attn.proj
    dpam = {}
    for k, v in sd.items():
        if k.startswith("visual.transformer.resblocks.23.attn."):
            k = k.replace("in_proj_weight", "qkv.weight").replace("in_proj_bias", "qkv.bias")
            k = k.replace("out_proj.weight", "proj.weight").replace("out_proj.bias", "proj.bias")
        dpam[k] = v
    dpam["input_resolution"] = torch.tensor(336)
    torch.save(dpam, d / "dpam_names.pt")
    # a TorchScript archive, the format of OpenAI's released .pt files
    with warnings.catch_warnings():  # tracing/saving warnings are about torch.jit, not us
        warnings.simplefilter("ignore")
        traced = torch.jit.trace_module(clip, {"encode_image": (torch.ones(1, 3, 336, 336),),
                                               "encode_text": (torch.zeros(1, 77, dtype=torch.long),)})
        torch.jit.save(traced, str(d / "torchscript.pt"))
    return d


@pytest.mark.parametrize("name", ["tiny.pt", "tiny.safetensors", "wrapped.pth", "dpam_names.pt", "torchscript.pt"])
def test_weights_files_load_identically(weights_files, name):
    ref = s2swclip.load_detector("S2SW-Tiny-24L", None, None, image_size=224, seed=42)
    det = s2swclip.load_detector("S2SW-Tiny-24L", str(weights_files / name), None, image_size=224, seed=42)
    images = make_images(1, 224)
    assert torch.equal(det.predict(images).anomaly_maps, ref.predict(images).anomaly_maps)


def test_backbone_by_config_path(tmp_path):
    import json

    _, cfg = resolve_model_config("S2SW-Tiny-24L")
    p = tmp_path / "my.json"
    p.write_text(json.dumps(cfg))
    det = s2swclip.load_detector(str(p), None, None, image_size=224)
    assert det.backbone.embed_dim == 768 and det.provenance["quick_gelu"] is True


def test_open_clip_names_resolve():
    name, cfg = resolve_model_config("ViT-L/14-336")
    assert name == "ViT-L-14-336" and cfg["vision_cfg"]["width"] == 1024


@pytest.mark.parametrize("kwargs, pattern", [
    (dict(backbone="NoSuchNet"), "unknown backbone"),
    (dict(backbone="/nope/cfg.json"), "config file not found"),
    (dict(weights="/nope/w.pt"), "weights file not found"),
    (dict(weights="no-such-tag"), "neither a file nor a pretrained tag"),
    (dict(image_size=8, weights=None), "smaller than"),
    (dict(precision="fp16", weights=None), "fp16 needs a CUDA"),
    (dict(device="cuda", weights=None), "CUDA is not available"),
    (dict(prompts="/nope/p.safetensors", weights=None), "prompt checkpoint not found"),
    (dict(weights=None, wavelet_lambdaa=0.5), "unknown detector option"),
])
def test_user_errors(kwargs, pattern):
    args = dict(backbone="S2SW-Tiny-24L", weights=None)
    args.update(kwargs)
    if torch.cuda.is_available() and "device" in kwargs:
        pytest.skip("CUDA present")
    with pytest.raises(S2SWError, match=pattern):
        s2swclip.load_detector(**args)


def test_offline_tag_says_what_to_download(monkeypatch):
    import open_clip

    def offline(*a, **k):
        raise OSError("network unreachable")

    monkeypatch.setattr(open_clip, "download_pretrained", offline)
    with pytest.raises(S2SWError) as e:
        s2swclip.load_detector("ViT-L-14-336", "openai", None)
    msg = str(e.value)
    assert "ViT-L-14-336px.pt" in msg and "pass it as weights=PATH" in msg and "\n" not in msg
    assert "--" not in msg and e.value.fields == ("weights",)  # the library names its argument, not a flag


def test_weights_for_another_backbone(weights_files):
    with pytest.raises(S2SWError, match="do not fit backbone"):
        s2swclip.load_detector("ViT-B-32", str(weights_files / "tiny.pt"), None)


def test_preset_and_options_reach_the_config():
    det = s2swclip.load_detector("S2SW-Tiny-24L", None, None, preset="visa-to-all", sigma=2.0)
    assert det.config.wavelet_lambda == 0.5 and det.config.image_size == 410 and det.config.sigma == 2.0


def test_config_without_text_heads_uses_one_head_per_64_channels(tmp_path):
    import json

    _, cfg = resolve_model_config("S2SW-Tiny-24L")
    del cfg["text_cfg"]["heads"]
    p = tmp_path / "noheads.json"
    p.write_text(json.dumps(cfg))
    det = s2swclip.load_detector(str(p), None, None, image_size=224)
    assert det.backbone.clip.transformer.resblocks[0].attn.num_heads == 1


def _exif_rotated_jpeg(path):
    """A 96 x 48 JPEG whose EXIF orientation tag (6: rotate 90 degrees clockwise) makes it 48 x 96."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(7)
    pixels = np.zeros((48, 96, 3), np.uint8)
    pixels[:, :48] = rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)  # texture on one side only
    pixels[:, 48:] = (200, 30, 30)
    img = Image.fromarray(pixels)
    exif = img.getexif()
    exif[0x0112] = 6
    img.save(path, format="JPEG", quality=95, exif=exif.tobytes())
    return path


def test_api_and_predict_give_the_same_score_for_an_exif_rotated_jpeg(capsys, tmp_path):
    """The detector comes with its preprocessing (EXIF orientation applied, as ``predict`` reads
    files): the API path and the CLI give one score; ignoring the tag gives another."""
    import json

    import numpy as np
    from PIL import Image

    from helpers import run_cli
    from s2swclip.data.dataset import load_image
    from s2swclip.data.images import preprocess

    photo = _exif_rotated_jpeg(tmp_path / "photo.jpg")
    det, transform = s2swclip.load_detector_and_transform("S2SW-Tiny-24L", None, None, image_size=56)
    x = transform(photo)
    assert x.shape == (3, 56, 56) and x.dtype == torch.float32
    assert torch.equal(det.preprocess(Image.open(photo)), x)  # a PIL image: the same input
    api_score = float(det.predict(x[None]).image_scores[0])
    code, _, err = run_cli(capsys, "predict", photo, "--out", tmp_path / "out", "--backbone", "S2SW-Tiny-24L",
                           "--weights", "none", "--image-size", "56", "--quiet")
    assert code == 0, err
    (row,) = json.loads((tmp_path / "out" / "results.json").read_text())["results"]
    assert abs(row["score"] - api_score) <= 1e-6  # float32, the same computation
    upright_ignored = torch.from_numpy(preprocess(load_image(photo), 56))[None]
    assert abs(float(det.predict(upright_ignored).image_scores[0]) - api_score) > 1e-4
    assert not np.array_equal(upright_ignored[0].numpy(), x.numpy())


def test_load_detector_from_a_spec_is_the_cli_detector():
    from s2swclip.specs import DetectorSpec

    spec = DetectorSpec("S2SW-Tiny-24L", None, image_size=56, few_shot_weight=0.25)
    det = s2swclip.load_detector(spec)
    ref = s2swclip.load_detector("S2SW-Tiny-24L", None, None, image_size=56, few_shot_weight=0.25)
    images = make_images(1, 56)
    assert det.config == ref.config
    assert torch.equal(det.predict(images).anomaly_maps, ref.predict(images).anomaly_maps)
