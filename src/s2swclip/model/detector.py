"""The S2SWCLIP detector: backbone + prompts -> image scores and anomaly maps (``docs/method.md`` §2-§7).

No I/O here: building from files is :mod:`s2swclip.api`'s job.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import nn

from .backbone import S2SWBackbone
from .config import DetectorConfig
from .fusion import adaptive_fusion
from .multiscale import enrich_features
from .prompts import FAMILIES, PromptLearner
from .similarity import anomaly_map, entropy_gain_similarity, probs_to_maps
from .smoothing import gaussian_smooth
from .wavelet import spatial_to_wavelet

TEXT_SETS = ("generic", "contrastive", "referenced", "fused")


@dataclass
class Prediction:
    """Result of :meth:`S2SWDetector.predict`.

    Attributes:
        image_scores: [B] anomaly scores in [0, 1].
        anomaly_maps: [B, S, S] smoothed pixel anomaly maps.
    """

    image_scores: torch.Tensor
    anomaly_maps: torch.Tensor

    def cpu(self) -> "Prediction":
        return Prediction(self.image_scores.cpu(), self.anomaly_maps.cpu())


@dataclass
class TextFeatures:
    """Text features of the four sets, each [2, C] (rows: normal, anomaly).

    ``raw`` holds the unnormalised encoder outputs (and the unnormalised fusion), ``unit`` the
    row-normalised ones used for scoring.
    """

    raw: dict[str, torch.Tensor]
    unit: dict[str, torch.Tensor]


@dataclass
class DetectorOutput:
    """What :meth:`S2SWDetector.forward` computes for a batch; everything else derives from it.

    Attributes:
        image_features: [B, C] global image features (unnormalised, float32, no gradient: the
            backbone is frozen).
        patch_features: one [B, N, C] tensor per feature layer (float32, no gradient); entries
            that are the same feature (layer aliasing) are the same tensor object.
        text: the four text sets; differentiable w.r.t. the prompts when grad mode is on.
    """

    image_features: torch.Tensor
    patch_features: list[torch.Tensor]
    text: TextFeatures

    def image_logits(self, temperature: float) -> dict[str, torch.Tensor]:
        """[B, 2] logits ``g . t / T`` (normalised g and t) for each text set."""
        g = _normalise(self.image_features)
        return {k: g @ self.text.unit[k].t() / temperature for k in TEXT_SETS}


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


class S2SWDetector(nn.Module):
    """Frozen CLIP backbone + learnable prompts (``docs/method.md`` §2-§7).

    The contract, as in open_clip and anomalib:

    * :meth:`forward` is the differentiable path (training): image features of the frozen
      backbone, and text features with gradients flowing to the prompts when grad mode is on.
    * :meth:`predict` is a thin inference wrapper (``torch.inference_mode``) that turns
      :meth:`forward`'s output into scores and maps. It never changes the module's mode.
    * Text features do not depend on the image: with grad mode off they are computed once and
      reused until the prompt tensors change (an optimiser step, ``load_state_dict``, a
      checkpoint applied) or the module moves (``.to()``, ``.half()``); the cache is keyed on
      the prompt tensors' version counters, storage and dtype, so it can never go stale.

    Args:
        backbone: the adapted CLIP (:class:`S2SWBackbone`).
        prompts: the prompt learner (only trainable part).
        config: hyper-parameters (:class:`DetectorConfig`).
        provenance: where the parts came from (backbone name, weights, prompt checkpoint, ...);
            reported by the CLI and the service, never used in the computation.
    """

    def __init__(self, backbone: S2SWBackbone, prompts: PromptLearner, config: DetectorConfig,
                 *, provenance: Mapping[str, Any] | None = None):
        super().__init__()
        self.backbone = backbone
        self.prompts = prompts
        self.config = config
        self.provenance: dict[str, Any] = dict(provenance or {})
        self._text_cache: tuple[tuple, TextFeatures] | None = None

    # ------------------------------------------------------------------------------ utilities
    @property
    def device(self) -> torch.device:
        return self.prompts.ctx_normal.device

    def train(self, mode: bool = True):
        super().train(mode)
        self.backbone.eval()  # the backbone is frozen and always in eval mode
        return self

    def autocast(self):
        """Autocast context for the configured precision (fp32: none)."""
        precision = self.config.precision
        if precision == "fp32":
            return contextlib.nullcontext()
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    # ----------------------------------------------------------------------------------- text
    def encode_text_features(self) -> TextFeatures:
        """Encode the three families and fuse them (gradients flow to the prompts, except
        through the fusion, which the released code computes as a constant; §3-§4, §10.5)."""
        raw = {}
        deep = self.prompts.deep_prompts if self.prompts.deep_prompts.numel() else None
        for family in FAMILIES:
            emb, eot = self.prompts.family_prompts(family)
            raw[family] = self.backbone.encode_text(emb, eot, deep).float()
        raw["fused"] = adaptive_fusion(raw["generic"].detach(), raw["contrastive"].detach(),
                                       raw["referenced"].detach(), self.config.variance_threshold)
        return TextFeatures(raw, {k: _normalise(v) for k, v in raw.items()})

    def _text_key(self) -> tuple:
        tensors = list(self.prompts.parameters()) + list(self.prompts.buffers())
        return tuple((t._version, t.data_ptr(), t.dtype, t.device) for t in tensors) + (
            self.config.variance_threshold,)

    def text_features(self) -> TextFeatures:
        """The four text sets: with grad mode on, freshly encoded (differentiable); with it
        off, cached until the prompts change or the module moves."""
        if torch.is_grad_enabled():
            return self.encode_text_features()
        key = self._text_key()
        if self._text_cache is None or self._text_cache[0] != key:
            self._text_cache = (key, self.encode_text_features())
        return self._text_cache[1]

    def _apply(self, fn, *args, **kwargs):
        self._text_cache = None  # .to() / .half() / .cuda(): recompute in the new device/dtype
        return super()._apply(fn, *args, **kwargs)

    # --------------------------------------------------------------------------------- vision
    def encode_image(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Global feature [B, C] and per-layer patch features [B, N, C] (float32, no grad)."""
        with torch.no_grad(), self.autocast():
            glob, patches = self.backbone.encode_image(images)
        cast: dict[int, torch.Tensor] = {}
        out = []
        for p in patches:  # keep aliasing (same object) visible to callers
            if id(p) not in cast:
                cast[id(p)] = p.float()
            out.append(cast[id(p)])
        return glob.float(), out

    def image_scores(self, global_features: torch.Tensor, text: TextFeatures) -> torch.Tensor:
        """[B] mean over the four text sets of softmax(g . t / T)[anomaly] (§7)."""
        g = _normalise(global_features)
        probs = [(g @ text.unit[k].t() / self.config.temperature).softmax(-1)[:, 1] for k in TEXT_SETS]
        return torch.stack(probs).mean(0)

    def layer_token_map(self, patch: torch.Tensor, fused: torch.Tensor) -> torch.Tensor:
        """Anomaly value per token [B, N] of one layer: enrichment + wavelet branches (§6.1-§6.3)."""
        c = self.config
        f = _normalise(patch)
        enriched = enrich_features(f, weight=c.multiscale_weight, pooled_tokens=c.pooled_tokens)
        wave = spatial_to_wavelet(f, swt_approx=c.swt_approx, swt_detail=c.swt_detail,
                                  dwt_approx=c.dwt_approx, dwt_detail=c.dwt_detail,
                                  dwt_mix=c.dwt_mix, swt_mix=c.swt_mix)
        both = entropy_gain_similarity(torch.cat([enriched, wave]), fused, fused, c.temperature)
        both = anomaly_map(both.transpose(1, 2))  # [2B, N]
        b = patch.shape[0]  # slices, not split(b): export keeps the batch dynamic
        m_enriched, m_wave = both[:b], both[b:]
        return (1 - c.wavelet_lambda) * m_enriched + c.wavelet_lambda * m_wave

    def anomaly_maps(self, patches: list[torch.Tensor], text: TextFeatures, size: int) -> torch.Tensor:
        """[B, S, S] smoothed map: sum of the layer maps, resized, Gaussian-filtered (§6.3-§6.4)."""
        per_object: dict[int, torch.Tensor] = {}
        total = None
        for p in patches:  # aliased layers (same tensor) are computed once
            if id(p) not in per_object:
                per_object[id(p)] = self.layer_token_map(p, text.unit["fused"])
            m = per_object[id(p)]
            total = m if total is None else total + m
        maps = probs_to_maps(total.unsqueeze(-1), size)[:, 0]
        if self.config.sigma:
            maps = gaussian_smooth(maps, sigma=self.config.sigma)
        return maps

    # -------------------------------------------------------------------------- entry points
    def _check_images(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != 3 or images.shape[2] != images.shape[3]:
            raise ValueError(f"images must be [B, 3, S, S], got {tuple(images.shape)}")
        if images.shape[-1] < self.backbone.patch_size:
            raise ValueError(f"image size {images.shape[-1]} is smaller than the backbone's "
                             f"{self.backbone.patch_size}-pixel patches")
        return images.to(self.device, torch.float32)

    def forward(self, images: torch.Tensor) -> DetectorOutput:
        """Features of a batch: the differentiable path used by training.

        Args:
            images: [B, 3, S, S] float, CLIP-normalised (any device; moved to the detector's).

        Returns:
            :class:`DetectorOutput`: frozen image features and the text features (with
            gradients to the prompts when grad mode is on).
        """
        images = self._check_images(images)
        glob, patches = self.encode_image(images)
        return DetectorOutput(glob, patches, self.text_features())

    @torch.inference_mode()
    def predict(self, images: torch.Tensor) -> Prediction:
        """Score a batch (inference; the module's train/eval mode is left as it is).

        Args:
            images: [B, 3, S, S] float, CLIP-normalised (any device; moved to the detector's).

        Returns:
            :class:`Prediction` with ``image_scores`` [B] and ``anomaly_maps`` [B, S, S], on the
            detector's device, float32.
        """
        out = self(images)
        size = images.shape[-1]
        return Prediction(self.image_scores(out.image_features, out.text),
                          self.anomaly_maps(out.patch_features, out.text, size))
