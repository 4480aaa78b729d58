"""Building a detector from a backbone, weights and a prompt checkpoint (the factory behind
:func:`s2swclip.load_detector`)."""

from __future__ import annotations

import logging
import os
from typing import Any

import torch

from ..errors import S2SWError, first_line
from .backbone import S2SWBackbone
from .checkpoint import PromptCheckpoint, load_prompts
from .config import PRECISIONS, DetectorConfig, get_preset
from .detector import S2SWDetector
from .prompts import PromptLearner
from .weights import backbone_detector_defaults, create_clip

log = logging.getLogger(__name__)

# options that change the features the prompts were trained on; a checkpoint records them
STRUCTURAL_OPTIONS = ("feature_layers", "dpam_layers", "layer_aliasing", "round_deep_prompts", "global_ln_post")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``"auto"``/None -> CUDA if available else CPU; checks that CUDA exists when asked for."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise S2SWError(f"invalid device {device!r}: use cpu, cuda, cuda:N or auto", fields=["device"]) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise S2SWError(f"device {device!r} requested but CUDA is not available; use device 'cpu'",
                        fields=["device"])
    return dev


def check_precision(precision: str, device: torch.device) -> None:
    if precision not in PRECISIONS:
        raise S2SWError(f"invalid precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if precision == "fp16" and device.type != "cuda":
        raise S2SWError("precision fp16 needs a CUDA device; on CPU use bf16 or fp32")
    if precision == "bf16" and device.type == "cpu":
        supported = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)()
        if not supported:
            log.warning("this CPU has no native bfloat16 support; bf16 will be slow, prefer fp32")


def load_detector(
    backbone: str = "ViT-L-14-336",
    weights: str | os.PathLike | None = "openai",
    prompts: str | os.PathLike | PromptCheckpoint | None = None,
    image_size: int | None = None,
    device: str | torch.device | None = "cpu",
    *,
    precision: str = "fp32",
    preset: str | None = None,
    quick_gelu: bool | None = None,
    cache_dir: str | None = None,
    seed: int = 0,
    untrained_ok: bool = False,
    **options: Any,
) -> S2SWDetector:
    """Build a ready-to-use S2SWCLIP detector.

    Args:
        backbone: open_clip model name (default ``ViT-L-14-336``), a name from this package's
            ``model_configs`` (e.g. ``S2SW-Tiny-24L``), or the path of an open_clip config JSON.
        weights: open_clip pretrained tag (default ``openai``), a local ``.pt``/``.pth``/
            ``.safetensors`` state dict (OpenAI or open_clip layout), or None (random init).
        prompts: prompt checkpoint (this package's ``.safetensors`` or the authors' ``.pth``),
            or None for untrained, randomly initialised prompts (seeded by ``seed``).
        image_size: input side S for data preparation (default: preset's or 518). ``predict``
            accepts any square size; maps come back at the input size.
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto``.
        precision: ``fp32`` (faithful), ``bf16`` (autocast; CPU with bf16 support, or CUDA),
            ``fp16`` (CUDA only).
        preset: ``visa-to-all`` or ``mvtec-to-visa``: the protocol's test-time values.
        quick_gelu: backbone MLP activation (None: decided from config/tag, QuickGELU for
            OpenAI-style weights).
        cache_dir: open_clip download cache.
        seed: seed of the random prompt initialisation (and of random weights).
        untrained_ok: do not warn when ``prompts`` is None (training starts from there).
        **options: any :class:`~s2swclip.model.config.DetectorConfig` field (e.g.
            ``wavelet_lambda=0.5``, ``layer_aliasing=False``, ``sigma=4``). The few-normal-shot
            mode's (used once ``det.set_references(images)`` is called): ``few_shot_weight=0.5``
            (w in [0, 1]; 1: references only, no trained prompts needed),
            ``few_shot_layers=(6, 12, 18, 24)``, ``few_shot_stream="plain"``, ``coreset=None``
            (or a fraction in (0, 1] of each layer's reference tokens to keep).

    Returns:
        An :class:`~s2swclip.model.detector.S2SWDetector` in eval mode on ``device``.
    """
    dev = resolve_device(device)
    check_precision(precision, dev)
    ckpt = prompts if isinstance(prompts, PromptCheckpoint) else (
        load_prompts(prompts) if prompts is not None else None)
    config = _detector_config(backbone, ckpt, preset=preset, image_size=image_size,
                              precision=precision, options=options)
    clip, info = create_clip(backbone, weights, quick_gelu=quick_gelu, cache_dir=cache_dir, seed=seed)
    _check_backbone_fits(clip, config, info["backbone"])
    bb = S2SWBackbone(clip, feature_layers=config.feature_layers, dpam_layers=config.dpam_layers,
                      layer_aliasing=config.layer_aliasing, global_ln_post=config.global_ln_post,
                      round_deep_prompts=config.round_deep_prompts)
    learner = _prompt_learner(bb, config, ckpt, seed, info["backbone"])
    if ckpt is None and not untrained_ok:
        log.warning("no prompt checkpoint given: prompts are untrained (random), so scores are "
                    "not meaningful; pass a prompt checkpoint as prompts=PATH")
    provenance = dict(info, prompts=None if ckpt is None else ckpt.path,
                      prompts_format=None if ckpt is None else ckpt.kind)
    det = S2SWDetector(bb, learner, config, provenance=provenance)
    return det.to(dev).eval()


def _detector_config(backbone: str, ckpt: PromptCheckpoint | None, *, preset: str | None,
                     image_size: int | None, precision: str, options: dict[str, Any]) -> DetectorConfig:
    """The detector's configuration, in order of precedence: ``options``, ``image_size`` and
    ``precision``, the prompt checkpoint's structure (and the backbone adaptation it was trained
    with), the ``preset``, the backbone config's own defaults, :class:`DetectorConfig`'s."""
    config = DetectorConfig().replace(**backbone_detector_defaults(backbone))  # usually none
    if preset is not None:
        config = config.replace(**get_preset(preset).test)
    if image_size is not None:
        config = config.replace(image_size=int(image_size))
    config = config.replace(precision=precision, **options)
    if ckpt is None:
        return config
    pc = ckpt.config
    config = config.replace(n_ctx=int(pc["n_ctx"]), depth=int(pc["depth"]), deep_tokens=int(pc["deep_tokens"]))
    # prompts trained with a non-default backbone adaptation are used with the same one
    trained_with = ckpt.meta.get("detector_config", {})
    inherited = {k: trained_with[k] for k in STRUCTURAL_OPTIONS if k in trained_with and k not in options}
    if inherited:
        config = config.replace(**inherited)
    trained_on = ckpt.meta.get("backbone")
    if trained_on and trained_on != str(backbone):
        log.warning("prompt checkpoint %s was trained with backbone %s, used here with %s",
                    ckpt.path, trained_on, backbone)
    return config


def _check_backbone_fits(clip, config: DetectorConfig, backbone_name: str) -> None:
    """Refuse (:class:`S2SWError` naming the field) a configuration the backbone cannot serve:
    feature or DPAM layers beyond its depth, few-shot layers likewise, an image smaller than one
    patch or beyond what its position embedding can be interpolated to."""
    n_blocks = len(clip.visual.transformer.resblocks)
    layers = config.feature_layers
    if max(layers) > n_blocks or config.dpam_layers > n_blocks:
        raise S2SWError(f"backbone {backbone_name} has {n_blocks} vision layers, but "
                        f"feature_layers={list(layers)} / dpam_layers={config.dpam_layers} ask for more",
                        fields=("feature_layers", "dpam_layers"))
    _check_few_shot_options(config, n_blocks)
    patch = int(clip.visual.conv1.kernel_size[0])
    if config.image_size < patch:
        raise S2SWError(f"image_size {config.image_size} is smaller than the backbone's {patch}-pixel "
                        f"patches: no tokens to score; use e.g. 518", fields=("image_size",))
    check_image_size_fits(clip, config.image_size, backbone_name)


def _prompt_learner(bb: S2SWBackbone, config: DetectorConfig, ckpt: PromptCheckpoint | None, seed: int,
                    backbone_name: str) -> PromptLearner:
    """The prompt learner of ``config`` on ``bb``: the checkpoint's prompts, or random ones."""
    vocabulary = None
    if ckpt is not None and "vocabulary" in ckpt.config:
        vocabulary = {k: tuple(v) for k, v in ckpt.config["vocabulary"].items()}
    gen = torch.Generator().manual_seed(seed)
    try:
        learner = PromptLearner(bb.token_embedding, bb.text_width, bb.context_length, n_ctx=config.n_ctx,
                                depth=config.depth, deep_tokens=config.deep_tokens,
                                vocabulary=vocabulary, generator=gen)
    except ValueError as e:  # prompts that do not fit this backbone's text context
        source = f"prompt checkpoint {ckpt.path}" if ckpt is not None else "the prompt options"
        raise S2SWError(f"{source} cannot be used with backbone {backbone_name}: {first_line(e)}") from None
    if ckpt is not None:
        ckpt.apply(learner)
    return learner


def with_prompts(det: S2SWDetector, prompts: str | os.PathLike | PromptCheckpoint) -> S2SWDetector:
    """A detector with the prompts of checkpoint ``prompts`` that shares ``det``'s backbone (the
    same module object: no second copy of the weights) and settings; what product profiles with
    their own prompts score with. The checkpoint must have been trained with ``det``'s backbone
    adaptation (:data:`STRUCTURAL_OPTIONS`), else S2SWError."""
    ckpt = prompts if isinstance(prompts, PromptCheckpoint) else load_prompts(prompts)
    pc = ckpt.config
    config = det.config.replace(n_ctx=int(pc["n_ctx"]), depth=int(pc["depth"]), deep_tokens=int(pc["deep_tokens"]))
    trained_with = ckpt.meta.get("detector_config", {})
    asked = config.replace(**{k: trained_with[k] for k in STRUCTURAL_OPTIONS if k in trained_with})
    differ = [k for k in STRUCTURAL_OPTIONS if getattr(asked, k) != getattr(config, k)]
    if differ:
        raise S2SWError(f"prompt checkpoint {ckpt.path} was trained with other {', '.join(differ)} than the shared "
                        f"backbone uses: it needs a detector of its own")
    learner = _prompt_learner(det.backbone, config, ckpt, 0, str(det.provenance.get("backbone")))
    provenance = dict(det.provenance, prompts=ckpt.path, prompts_format=ckpt.kind)
    return S2SWDetector(det.backbone, learner.to(det.device), config, provenance=provenance).eval()


# ------------------------------------------------------------------------- few-normal-shot mode
def _check_few_shot_options(config: DetectorConfig, n_blocks: int) -> None:
    """The few-shot options of ``config`` are usable with a backbone of ``n_blocks`` layers."""
    from .references import FEW_SHOT_STREAMS

    w = config.few_shot_weight
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 <= w <= 1:
        raise S2SWError(f"few_shot_weight must be a number in [0, 1] (1: references only), got {w!r}")
    layers = config.few_shot_layers
    if not layers or len(set(layers)) != len(layers) or any(not 1 <= x <= n_blocks for x in layers):
        raise S2SWError(f"few_shot_layers must be distinct layer numbers in 1..{n_blocks}, got {list(layers)}")
    if config.few_shot_stream not in FEW_SHOT_STREAMS:
        raise S2SWError(f"few_shot_stream must be one of {', '.join(FEW_SHOT_STREAMS)}, "
                        f"got {config.few_shot_stream!r}")
    c = config.coreset
    if c is not None and (isinstance(c, bool) or not isinstance(c, (int, float)) or not 0 < c <= 1):
        raise S2SWError(f"coreset must be None or the fraction of reference tokens to keep, in (0, 1], got {c!r}")


#: The patch grid may be at most this many times the backbone's native position table (per side):
#: beyond, the interpolated position embeddings carry no information the model was trained on.
MAX_GRID_FACTOR = 4


def check_image_size_fits(clip, image_size: int, backbone: str) -> None:
    """Refuse an image size beyond the position-embedding interpolation limit
    (:data:`MAX_GRID_FACTOR` x the native grid) or whose attention over one image would not fit
    in the available memory. One :class:`S2SWError` line naming ``image_size``."""
    from ..arrays import available_memory

    visual = clip.visual
    patch = int(visual.conv1.kernel_size[0])
    native = int(round((visual.positional_embedding.shape[0] - 1) ** 0.5))
    grid, limit = int(image_size) // patch, MAX_GRID_FACTOR * native
    if grid > limit:
        raise S2SWError(f"image_size {image_size} gives a {grid}x{grid} patch grid, more than {MAX_GRID_FACTOR}x "
                        f"the {native}x{native} position table of backbone {backbone}; use at most image_size "
                        f"{limit * patch}", fields=["image_size"])
    tokens = grid * grid + 1
    width = int(visual.positional_embedding.shape[1])
    heads = int(getattr(visual.transformer.resblocks[0].attn, "num_heads", 1))
    need = 4 * (3 * heads * tokens * tokens + 16 * tokens * width)  # scores, softmax, a copy; activations
    free = available_memory()
    if free is not None and need > free:
        raise S2SWError(f"image_size {image_size}: one image needs about {need / 2**30:.1f} GiB in the backbone "
                        f"({tokens} tokens), but only {free / 2**30:.1f} GiB of memory is available; use a smaller "
                        f"image_size", fields=["image_size"])
