"""Building an open_clip CLIP model from a model name or config file, and loading its weights.

Three sources of weights:

* an open_clip pretrained tag (``"openai"``, ``"laion2b_s32b_b82k"``, ...), downloaded by
  open_clip into its cache;
* a local file: ``.pt``/``.pth``/``.bin`` (a plain state dict, possibly wrapped in
  ``{"state_dict": ...}``, or OpenAI's TorchScript archive) or ``.safetensors``; OpenAI and
  open_clip key layouts are the same for CLIP ViTs, and the DPAM-replaced key names of the
  AnomalyCLIP code (``attn.qkv``/``attn.proj``) are mapped back;
* ``None``: random initialisation (tests, the offline demo).

Loading runs nothing from the file: safetensors, ``torch.load(..., weights_only=True)``, or, for
OpenAI's TorchScript archives, this package's own reader of their tensors (:mod:`.torchfiles`).
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import torch

from ..errors import S2SWError, first_line
from ..fileio import read_regular_file
from .torchfiles import (UnreadableFile, is_torchscript_archive, read_torchscript_state_dict,
                         torch_load_tensors)

_CONFIG_DIR = Path(__file__).resolve().parent.parent / "model_configs"
_MAX_CONFIG_BYTES = 1 << 20  # a model config is a few hundred bytes
# OpenAI metadata entries, and the text attention mask that TorchScript archives store as a tensor
_DROP_KEYS = ("input_resolution", "context_length", "vocab_size", "attn_mask")
#: Key of a model config (this package's ``model_configs``, or a config JSON) holding detector
#: defaults for that backbone (e.g. the feature layers of a shallow test backbone); not open_clip's.
DETECTOR_DEFAULTS_KEY = "s2swclip_detector_defaults"
_DPAM_KEY_MAP = {
    ".attn.qkv.weight": ".attn.in_proj_weight",
    ".attn.qkv.bias": ".attn.in_proj_bias",
    ".attn.proj.weight": ".attn.out_proj.weight",
    ".attn.proj.bias": ".attn.out_proj.bias",
}


def resolve_model_config(backbone: str) -> tuple[str, dict[str, Any]]:
    """Return ``(name, config)`` for a model name or the path of an open_clip config JSON."""
    path = Path(os.path.expanduser(str(backbone)))
    if path.suffix == ".json" or path.is_file():
        if not path.is_file():
            raise S2SWError(f"backbone config file not found: {path} (pass an open_clip model "
                            f"name such as ViT-L-14-336, or the path of a model-config JSON)")
        try:
            raw = read_regular_file(path, _MAX_CONFIG_BYTES)
            if len(raw) > _MAX_CONFIG_BYTES:
                raise ValueError(f"it is larger than {_MAX_CONFIG_BYTES} bytes")
            cfg = json.loads(raw)
        except (OSError, ValueError, RecursionError) as e:
            raise S2SWError(f"backbone config {path} is not valid JSON: {first_line(e)}") from None
        if isinstance(cfg, dict) and "model_cfg" in cfg:  # open_clip local-dir/hub layout
            cfg = cfg["model_cfg"]
        _check_config(cfg, str(path))
        return path.stem, cfg
    ours = _CONFIG_DIR / f"{backbone}.json"
    if ours.is_file():
        cfg = json.loads(ours.read_text())
        return str(backbone), cfg
    import open_clip

    name = str(backbone).replace("/", "-")
    cfg = open_clip.get_model_config(name)
    if cfg is None:
        raise S2SWError(f"unknown backbone {backbone!r}: pass an open_clip ViT model name "
                        f"(e.g. ViT-L-14-336, ViT-B-16) or the path of a model-config JSON")
    cfg = copy.deepcopy(cfg)
    _check_config(cfg, name)
    return name, cfg


#: (minimum, maximum) of the integers of a backbone config that size the model
_INT_FIELDS = {
    "embed_dim": (1, 1 << 14),
    "vision_cfg.layers": (1, 256), "vision_cfg.width": (1, 1 << 14), "vision_cfg.head_width": (1, 1 << 14),
    "vision_cfg.patch_size": (1, 1024), "vision_cfg.image_size": (1, 8192),
    "text_cfg.context_length": (1, 4096), "text_cfg.vocab_size": (1, 1 << 21), "text_cfg.width": (1, 1 << 14),
    "text_cfg.heads": (1, 1024), "text_cfg.layers": (1, 256),
}
_MEMORY_RESERVE = 256 << 20  # left free besides the parameters' estimate


def backbone_detector_defaults(backbone: str) -> dict[str, Any]:
    """Detector options a backbone's config sets as its defaults (``DETECTOR_DEFAULTS_KEY``):
    e.g. ``feature_layers`` of a backbone shallower than the paper's 24 layers. Usually empty."""
    _, cfg = resolve_model_config(backbone)
    defaults = cfg.get(DETECTOR_DEFAULTS_KEY, {})
    if not isinstance(defaults, dict):
        raise S2SWError(f"backbone config {backbone}: '{DETECTOR_DEFAULTS_KEY}' must be a mapping of "
                        f"detector options")
    return dict(defaults)


def _check_config(cfg: Any, where: str) -> None:
    """An open_clip CLIP config: a ViT tower, integers in range where they size the model, and
    parameters that fit in the available memory (estimated before anything is built)."""
    if not isinstance(cfg, dict) or "vision_cfg" not in cfg or "text_cfg" not in cfg:
        raise S2SWError(f"backbone config {where} lacks 'vision_cfg'/'text_cfg': not an open_clip "
                        f"CLIP model config")
    v, t = cfg["vision_cfg"], cfg["text_cfg"]
    if not isinstance(v, dict) or not isinstance(t, dict):
        raise S2SWError(f"backbone config {where}: 'vision_cfg' and 'text_cfg' must be JSON objects")
    if isinstance(v.get("layers"), (list, tuple)) or "timm_model_name" in v:
        raise S2SWError(f"backbone {where}: only ViT vision towers are supported (DPAM needs "
                        f"transformer blocks), not ResNet/timm towers")
    if "hf_model_name" in t or cfg.get("custom_text"):
        raise S2SWError(f"backbone {where}: only the standard CLIP text transformer is supported")
    if "embed_dim" not in cfg:
        raise S2SWError(f"backbone config {where} lacks 'embed_dim'")
    values = {}
    for field, (lo, hi) in _INT_FIELDS.items():
        part, _, key = field.rpartition(".")
        holder = {"": cfg, "vision_cfg": v, "text_cfg": t}[part]
        if key not in holder:
            continue
        value = holder[key]
        if isinstance(value, (list, tuple)) and key == "image_size" and len(value) == 2:
            value = max(value) if all(type(x) is int for x in value) else value
        if type(value) is not int or not lo <= value <= hi:
            raise S2SWError(f"backbone config {where}: {field} must be an integer in {lo}..{hi}, got "
                            f"{json.dumps(value)[:40]}")
        values[field] = value
    ratio = v.get("mlp_ratio", 4.0)
    if type(ratio) not in (int, float) or not 0 < ratio <= 64:
        raise S2SWError(f"backbone config {where}: vision_cfg.mlp_ratio must be a number in (0, 64], "
                        f"got {json.dumps(ratio)[:40]}")
    if values.get("vision_cfg.patch_size", 16) > values.get("vision_cfg.image_size", 224):
        raise S2SWError(f"backbone config {where}: vision_cfg.patch_size is larger than vision_cfg.image_size")
    _check_parameter_memory(values, float(ratio), where)


def parameter_bytes(values: dict[str, int], mlp_ratio: float = 4.0) -> int:
    """float32 bytes of a CLIP ViT's parameters, from its config (open_clip's defaults for what
    is not given): per block attention (4 W^2) and MLP (2 r W^2), plus the embeddings."""
    g = values.get
    vw, tw, e = g("vision_cfg.width", 768), g("text_cfg.width", 512), g("embed_dim", 512)
    grid = g("vision_cfg.image_size", 224) // g("vision_cfg.patch_size", 16)
    vision = g("vision_cfg.layers", 12) * (4 + 2 * mlp_ratio) * vw * vw + (grid * grid + 1) * vw \
        + 3 * g("vision_cfg.patch_size", 16) ** 2 * vw + vw * e
    text = g("text_cfg.layers", 12) * 12 * tw * tw + (g("text_cfg.vocab_size", 49408)
                                                      + g("text_cfg.context_length", 77)) * tw + tw * e
    return int(4 * (vision + text))


def _check_parameter_memory(values: dict[str, int], mlp_ratio: float, where: str) -> None:
    from ..arrays import available_memory

    need, free = parameter_bytes(values, mlp_ratio), available_memory()
    if free is not None and need + _MEMORY_RESERVE > free:
        raise S2SWError(f"backbone config {where} describes a model of about {need / 1e9:.1f} GB of parameters, "
                        f"but only {free / 1e9:.1f} GB of memory is available; check its widths and layers")


def _download_hint(name: str, tag: str, pcfg: dict) -> str:
    where = pcfg.get("url") or (f"https://huggingface.co/{pcfg['hf_hub'].rstrip('/')}"
                                if pcfg.get("hf_hub") else "the model's release page")
    return (f"could not download the {name} '{tag}' file (offline?): download it from {where} "
            f"and pass it as weights=PATH")


def fetch_pretrained(name: str, tag: str, cache_dir: str | None = None) -> tuple[str, dict]:
    """Path of the weights file for an open_clip pretrained tag (downloading if needed)."""
    import open_clip

    pcfg = open_clip.get_pretrained_cfg(name, tag)
    if not pcfg:
        tags = open_clip.list_pretrained_tags_by_model(name)
        raise S2SWError(f"weights {tag!r} is neither a file nor a pretrained tag of {name}; pass a weights "
                        f"file path or one of its tags: {', '.join(tags) or 'none'}", fields=["weights"])
    try:
        path = open_clip.download_pretrained(pcfg, cache_dir=cache_dir)
    except Exception:  # network errors come in many types; all mean the same to the user
        raise S2SWError(_download_hint(name, tag, pcfg), fields=["weights"]) from None
    if not path or not os.path.isfile(path):
        raise S2SWError(_download_hint(name, tag, pcfg), fields=["weights"])
    return path, pcfg


def load_weights_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a CLIP state dict from a file, safely. Key layout is normalised (see module doc)."""
    path = Path(os.path.expanduser(str(path)))
    if not path.is_file():
        raise S2SWError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            obj: Any = _load_safetensors(path)
        elif is_torchscript_archive(path):
            obj = read_torchscript_state_dict(path)
        else:
            obj = torch_load_tensors(path)
    except UnreadableFile as e:
        raise S2SWError(f"cannot read weights file {path}: {e}") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    if (not isinstance(obj, dict) or not obj or not all(isinstance(k, str) for k in obj)
            or not all(isinstance(v, torch.Tensor) for v in obj.values())):
        raise S2SWError(f"weights file {path} does not hold a CLIP state dict")
    out = {}
    for k, v in obj.items():
        k = k[7:] if k.startswith("module.") else k
        if k in _DROP_KEYS:
            continue
        for old, new in _DPAM_KEY_MAP.items():
            if k.startswith("visual.") and k.endswith(old):
                k = k[: -len(old)] + new
        out[k] = v
    return out


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as e:  # safetensors reports a bad file in several types
        raise UnreadableFile(f"not a valid safetensors file ({first_line(e)})") from None


def create_clip(
    backbone: str = "ViT-L-14-336",
    weights: str | os.PathLike | None = "openai",
    *,
    quick_gelu: bool | None = None,
    cache_dir: str | None = None,
    seed: int = 0,
):
    """Build an ``open_clip.CLIP`` for ``backbone`` and load ``weights`` into it.

    Args:
        backbone: open_clip model name, a name from this package's ``model_configs``, or the
            path of a model-config JSON.
        weights: pretrained tag, weights file path, or ``None`` for random initialisation
            (seeded with ``seed``, reproducible).
        quick_gelu: activation of the MLPs. ``None`` decides: the config's ``quick_gelu`` key if
            present, else the pretrained tag's setting, else ``True`` (OpenAI CLIP, the paper's
            backbone family, uses QuickGELU).
        cache_dir: open_clip download cache.

    Returns:
        ``(model, info)``: the model in eval mode, float32, on CPU, and a dict describing it.
    """
    import open_clip

    name, cfg = resolve_model_config(backbone)
    weights_path, pcfg = None, {}
    if weights is not None:
        wpath = Path(os.path.expanduser(str(weights)))
        if wpath.is_file():
            weights_path = str(wpath)
        elif wpath.suffix in (".pt", ".pth", ".bin", ".safetensors") or os.sep in str(weights):
            raise S2SWError(f"weights file not found: {wpath} (pass an existing file, a pretrained "
                            f"tag such as 'openai', or none for random weights)", fields=["weights"])
        elif Path(os.path.expanduser(str(backbone))).suffix == ".json":
            raise S2SWError(f"weights {weights!r} is a pretrained tag, but the backbone is a config "
                            f"file; pass a weights file as weights=PATH", fields=["weights"])
        else:
            weights_path, pcfg = fetch_pretrained(name, str(weights), cache_dir)
    if quick_gelu is None:
        quick_gelu = bool(cfg.get("quick_gelu", pcfg.get("quick_gelu", True)))
    cfg = dict(cfg)
    cfg["quick_gelu"] = quick_gelu
    text_cfg = dict(cfg["text_cfg"])
    if "heads" not in text_cfg:
        # OpenAI CLIP (and the AnomalyCLIP code, which derives it from the weights) uses one head
        # per 64 channels; open_clip's own default (8) would silently change a custom config.
        text_cfg["heads"] = max(1, int(text_cfg.get("width", 512)) // 64)
    cfg["text_cfg"] = text_cfg
    cfg.pop("custom_text", None)
    cfg.pop(DETECTOR_DEFAULTS_KEY, None)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            model = open_clip.CLIP(**cfg)
        except (TypeError, ValueError, AssertionError, RuntimeError, ZeroDivisionError) as e:
            raise S2SWError(f"backbone config {name} cannot build a CLIP model ({type(e).__name__}: {first_line(e)}); "
                            f"check its fields against open_clip's model configs") from None
    if weights_path is not None:
        sd = load_weights_file(weights_path)
        if "logit_scale" not in sd:
            sd["logit_scale"] = model.logit_scale.detach().clone()
        own = model.state_dict()
        bad = [k for k, v in sd.items() if k in own and own[k].shape != v.shape]
        missing = [k for k in own if k not in sd]
        unexpected = [k for k in sd if k not in own]
        if bad or missing or unexpected:
            detail = "; ".join(
                f"{label}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
                for label, keys in (("shape mismatch", bad), ("missing", missing),
                                    ("unexpected", unexpected)) if keys)
            raise S2SWError(f"weights {weights_path} do not fit backbone {name}: {detail}; "
                            f"pass the matching backbone", fields=["backbone"])
        model.load_state_dict(sd, strict=True)
    model.eval().requires_grad_(False)
    info = {"backbone": name, "weights": str(weights) if weights is not None else None,
            "weights_path": weights_path, "quick_gelu": quick_gelu}
    return model, info
