"""The S2SWCLIP detector: backbone + prompts -> image scores and anomaly maps (spec 4-6).

No I/O here: building from files is :mod:`s2swclip.api`'s job.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

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


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


class S2SWDetector(nn.Module):
    """Frozen CLIP backbone + learnable prompts.

    Args:
        backbone: the adapted CLIP (:class:`S2SWBackbone`).
        prompts: the prompt learner (only trainable part).
        config: hyper-parameters (:class:`DetectorConfig`).
    """

    def __init__(self, backbone: S2SWBackbone, prompts: PromptLearner, config: DetectorConfig):
        super().__init__()
        self.backbone = backbone
        self.prompts = prompts
        self.config = config
        self._text_cache: TextFeatures | None = None
        self.info: dict = {}

    # ------------------------------------------------------------------------------ utilities
    @property
    def device(self) -> torch.device:
        return self.prompts.ctx_normal.device

    def train(self, mode: bool = True):
        super().train(mode)
        self.backbone.eval()  # the backbone is frozen and always in eval mode
        self._text_cache = None
        return self

    def refresh_text(self) -> None:
        """Forget cached text features (call after changing prompt parameters in place)."""
        self._text_cache = None

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
        through the fusion, which the released code computes as a constant)."""
        raw = {}
        deep = self.prompts.deep_prompts if self.prompts.deep_prompts.numel() else None
        for family in FAMILIES:
            emb, eot = self.prompts.family_prompts(family)
            raw[family] = self.backbone.encode_text(emb, eot, deep).float()
        raw["fused"] = adaptive_fusion(raw["generic"].detach(), raw["contrastive"].detach(),
                                       raw["referenced"].detach(), self.config.variance_threshold)
        return TextFeatures(raw, {k: _normalise(v) for k, v in raw.items()})

    def text_features(self) -> TextFeatures:
        """Text features, computed once and cached while the detector is in eval mode."""
        if self.training:
            return self.encode_text_features()
        if self._text_cache is None:
            with torch.no_grad():
                self._text_cache = self.encode_text_features()
        return self._text_cache

    # --------------------------------------------------------------------------------- vision
    def encode_image(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Global feature [B, C] and per-layer patch features [B, N, C] (float32)."""
        with self.autocast():
            glob, patches = self.backbone.encode_image(images)
        cast: dict[int, torch.Tensor] = {}
        out = []
        for p in patches:  # keep aliasing (same object) visible to callers
            if id(p) not in cast:
                cast[id(p)] = p.float()
            out.append(cast[id(p)])
        return glob.float(), out

    def image_scores(self, global_features: torch.Tensor, text: TextFeatures) -> torch.Tensor:
        """[B] mean over the four text sets of softmax(g . t / T)[anomaly] (spec 6)."""
        g = _normalise(global_features)
        probs = [(g @ text.unit[k].t() / self.config.temperature).softmax(-1)[:, 1] for k in TEXT_SETS]
        return torch.stack(probs).mean(0)

    def layer_token_map(self, patch: torch.Tensor, fused: torch.Tensor) -> torch.Tensor:
        """Anomaly value per token [B, N] of one layer: enrichment + wavelet branches (spec 6)."""
        c = self.config
        f = _normalise(patch)
        enriched = enrich_features(f, weight=c.multiscale_weight, pooled_tokens=c.pooled_tokens)
        wave = spatial_to_wavelet(f, swt_approx=c.swt_approx, swt_detail=c.swt_detail,
                                  dwt_approx=c.dwt_approx, dwt_detail=c.dwt_detail,
                                  dwt_mix=c.dwt_mix, swt_mix=c.swt_mix)
        both = entropy_gain_similarity(torch.cat([enriched, wave]), fused, fused, c.temperature)
        m_enriched, m_wave = anomaly_map(both.movedim(-1, 1)).split(patch.shape[0])
        return (1 - c.wavelet_lambda) * m_enriched + c.wavelet_lambda * m_wave

    def anomaly_maps(self, patches: list[torch.Tensor], text: TextFeatures, size: int) -> torch.Tensor:
        """[B, S, S] smoothed map: sum of the layer maps, resized, Gaussian-filtered."""
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

    @torch.inference_mode()
    def predict(self, images: torch.Tensor) -> Prediction:
        """Score a batch.

        Args:
            images: [B, 3, S, S] float, CLIP-normalised (any device; moved to the detector's).

        Returns:
            :class:`Prediction` with ``image_scores`` [B] and ``anomaly_maps`` [B, S, S], on the
            detector's device, float32.
        """
        if images.dim() != 4 or images.shape[1] != 3 or images.shape[2] != images.shape[3]:
            raise ValueError(f"images must be [B, 3, S, S], got {tuple(images.shape)}")
        size = images.shape[-1]
        if size < self.backbone.patch_size:
            raise ValueError(f"image size {size} is smaller than the patch size {self.backbone.patch_size}")
        if self.training:
            self.eval()
        images = images.to(self.device, torch.float32)
        text = self.text_features()
        glob, patches = self.encode_image(images)
        return Prediction(self.image_scores(glob, text), self.anomaly_maps(patches, text, size))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.predict(images)
        return out.image_scores, out.anomaly_maps

