"""The S2SWCLIP detector: backbone + prompts -> image scores and anomaly maps (``docs/method.md`` §2-§7).

Optionally with a few normal reference images (the few-normal-shot mode,
:mod:`s2swclip.model.references`): their memory bank gives a second map that is fused with the
zero-shot one.

No I/O here: building from files is :mod:`s2swclip.model.factory`'s job (the references file is the one
exception: :meth:`S2SWDetector.save_references` / :meth:`S2SWDetector.load_references`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .backbone import S2SWBackbone
from .config import DetectorConfig
from .fusion import adaptive_fusion
from .multiscale import enrich_features
from .prompts import FAMILIES, PromptLearner
from .references import (CORESET_PROJECTION_DIM, FEW_SHOT_STREAMS, ReferenceBank, bank_tokens, coreset_size,
                         few_shot_token_map, greedy_coreset)
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
        few_shot_maps: [B, S, S] smoothed few-shot maps when references are set (then the two
            fields above are the fused ones), else None.
    """

    image_scores: torch.Tensor
    anomaly_maps: torch.Tensor
    few_shot_maps: torch.Tensor | None = None

    def cpu(self) -> "Prediction":
        return Prediction(self.image_scores.cpu(), self.anomaly_maps.cpu(),
                          None if self.few_shot_maps is None else self.few_shot_maps.cpu())


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
        few_shot_features: when requested, one [B, N, C] tensor per few-shot layer (float32, no
            gradient, from the same backbone pass), else None.
    """

    image_features: torch.Tensor
    patch_features: list[torch.Tensor]
    text: TextFeatures
    few_shot_features: list[torch.Tensor] | None = None

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
    * References (few-normal-shot mode): :meth:`set_references` builds a memory bank held in
      non-persistent buffers (it follows ``.to()``/``.half()``, stays out of ``state_dict``);
      while it is set, :meth:`predict` fuses the zero-shot and few-shot results with weight
      ``config.few_shot_weight``. Without references, everything is as if the mode did not exist.

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
        self.references = ReferenceBank()

    # ------------------------------------------------------------------------------ utilities
    def preprocess(self, image) -> torch.Tensor:
        """The model input of one image for :meth:`predict`: float32 ``[3, S, S]`` (S: the
        configured ``image_size``) on the CPU, made as ``s2swclip predict`` makes it (EXIF
        orientation, RGB, bicubic resize, CLIP normalisation;
        :func:`~s2swclip.data.images.model_input`). ``image``: a path, the file's bytes or a PIL
        image. Stack several for a batch: ``det.predict(torch.stack([det.preprocess(p) for p in paths]))``."""
        from ..data.images import model_input

        return torch.from_numpy(model_input(image, int(self.config.image_size)))

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
    def encode_image(self, images: torch.Tensor, few_shot_layers: Sequence[int] = (),
                     few_shot_stream: str = "plain"):
        """Global feature [B, C] and per-layer patch features [B, N, C] (float32, no grad).

        With ``few_shot_layers``, a third item from the same backbone pass: the [B, N, C]
        features of those layers in ``few_shot_stream`` (float32), see
        :meth:`S2SWBackbone.encode_image`'s ``extra_layers``.
        """
        with torch.no_grad(), self.autocast():
            glob, patches, *extra = self.backbone.encode_image(
                images, extra_layers=tuple(few_shot_layers), extra_stream=few_shot_stream)
        cast: dict[int, torch.Tensor] = {}
        out = []
        for p in patches:  # keep aliasing (same object) visible to callers
            if id(p) not in cast:
                cast[id(p)] = p.float()
            out.append(cast[id(p)])
        if not few_shot_layers:
            return glob.float(), out
        return glob.float(), out, [f.float() for f in extra[0]]

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
        return self.token_values_to_maps(total, size)

    def token_values_to_maps(self, values: torch.Tensor, size: int) -> torch.Tensor:
        """[B, N] token values (token 0, the class token, ignored) -> [B, S, S]: bilinear
        resize of the G x G grid, then the Gaussian filter (§6.3-§6.4)."""
        maps = probs_to_maps(values.unsqueeze(-1), size)[:, 0]
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

    def forward(self, images: torch.Tensor, *, few_shot_layers: Sequence[int] = (),
                few_shot_stream: str = "plain") -> DetectorOutput:
        """Features of a batch: the differentiable path used by training.

        Args:
            images: [B, 3, S, S] float, CLIP-normalised (any device; moved to the detector's).
            few_shot_layers: also return these layers' features (``few_shot_features``), from
                the same backbone pass; ``few_shot_stream`` ``"plain"`` or ``"dpam"``.

        Returns:
            :class:`DetectorOutput`: frozen image features and the text features (with
            gradients to the prompts when grad mode is on).
        """
        images = self._check_images(images)
        glob, patches, *extra = self.encode_image(images, few_shot_layers, few_shot_stream)
        return DetectorOutput(glob, patches, self.text_features(), extra[0] if extra else None)

    @torch.inference_mode()
    def predict(self, images: torch.Tensor) -> Prediction:
        """Score a batch (inference; the module's train/eval mode is left as it is).

        Args:
            images: [B, 3, S, S] float, CLIP-normalised (any device; moved to the detector's).

        Returns:
            :class:`Prediction` with ``image_scores`` [B] and ``anomaly_maps`` [B, S, S], on the
            detector's device, float32. With references set: ``few_shot_maps`` [B, S, S] and the
            fused ``anomaly_maps = (1 - w) * zero_shot + w * few_shot`` and ``image_scores =
            (1 - w) * zero_shot_score + w * max(few_shot_map)``, ``w = config.few_shot_weight``
            (``w = 1``: the zero-shot branch is not computed, the prompts play no part).
        """
        bank = self.references
        if not bank.num_references:
            out = self(images)
            size = images.shape[-1]
            return Prediction(self.image_scores(out.image_features, out.text),
                              self.anomaly_maps(out.patch_features, out.text, size))
        size = images.shape[-1]
        if size != bank.image_size:
            raise ValueError(f"the references are {bank.image_size} px images, these are {size} px: "
                             f"score images of the references' size")
        out = self(images, few_shot_layers=bank.layers, few_shot_stream=bank.stream)
        return self.fuse_few_shot(out, bank.banks, size)

    def fuse_few_shot(self, out: DetectorOutput, banks: Sequence[torch.Tensor], size: int, *,
                      weight: float | None = None) -> Prediction:
        """The few-shot map of ``out.few_shot_features`` against ``banks`` (one [M_l, C] bank of
        unit rows per few-shot layer) and its fusion with ``out``'s zero-shot result, weight
        ``w = weight`` (default ``config.few_shot_weight``; see :meth:`predict`; ``w = 1``: only
        ``out.few_shot_features`` is used). Also what the export graph computes, with the banks as
        constants, and what a product profile scores with (its own bank and weight, the shared
        backbone).

        Returns:
            :class:`Prediction` with ``few_shot_maps`` [B, S, S].
        """
        few_shot = self.token_values_to_maps(F.pad(few_shot_token_map(out.few_shot_features, banks), (1, 0)), size)
        few_shot_score = few_shot.flatten(1).amax(dim=1)
        w = float(self.config.few_shot_weight if weight is None else weight)
        if w == 1:
            return Prediction(few_shot_score, few_shot, few_shot)
        scores = self.image_scores(out.image_features, out.text)
        maps = self.anomaly_maps(out.patch_features, out.text, size)
        return Prediction((1 - w) * scores + w * few_shot_score, (1 - w) * maps + w * few_shot, few_shot)

    @property
    def map_scale(self) -> float:
        """The bound that puts ``anomaly_maps`` on the image scores' [0, 1] scale (``map /
        map_scale``): the zero-shot map sums one probability per feature layer (L, docs/method.md
        §6.3); with references and few-shot weight w the fused map is bounded by ``(1 - w) * L + w``
        (the few-shot map lies in [0, 1]; §13)."""
        layers = float(len(self.config.feature_layers))
        if self.num_references:
            w = float(self.config.few_shot_weight)
            return (1.0 - w) * layers + w
        return layers

    # ------------------------------------------------------------------------------ references
    @property
    def num_references(self) -> int:
        """K, the number of reference images of the memory bank (0: none set)."""
        return self.references.num_references

    def _bank_dtype(self) -> torch.dtype:
        return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[self.config.precision]

    @torch.inference_mode()
    def set_references(self, images: torch.Tensor, *, batch_size: int = 8) -> None:
        """Build the memory bank from K normal reference images; replaces any previous bank.

        Uses the configuration's ``few_shot_layers``, ``few_shot_stream`` and ``coreset``; the
        bank is stored on the detector's device in its precision (float32, bfloat16 or float16).

        Args:
            images: [K, 3, S, S] float, CLIP-normalised like :meth:`predict`'s input; queries
                must later have the same S.
            batch_size: reference images per backbone pass.
        """
        c = self.config
        banks = self.reference_banks(images, batch_size=batch_size)
        self.references.set(banks, layers=c.few_shot_layers, stream=c.few_shot_stream, num_references=images.shape[0],
                            image_size=images.shape[-1], coreset=c.coreset)

    @torch.inference_mode()
    def reference_banks(self, images: torch.Tensor, *, batch_size: int = 8) -> list[torch.Tensor]:
        """The per-layer banks :meth:`set_references` would set for ``images``, without setting
        them (the detector is not changed): one [M_l, C] tensor of unit rows per
        ``config.few_shot_layers`` entry, on the detector's device in its precision."""
        c = self.config
        if c.few_shot_stream not in FEW_SHOT_STREAMS:
            raise ValueError(f"few_shot_stream must be one of {FEW_SHOT_STREAMS}, got {c.few_shot_stream!r}")
        if not c.few_shot_layers:
            raise ValueError("few_shot_layers is empty")
        images = self._check_images(images)
        if images.shape[0] < 1:
            raise ValueError("set_references needs at least one image")
        per_layer: list[list[torch.Tensor]] = [[] for _ in c.few_shot_layers]
        for start in range(0, images.shape[0], max(1, int(batch_size))):
            *_, feats = self.encode_image(images[start:start + batch_size], c.few_shot_layers, c.few_shot_stream)
            for acc, f in zip(per_layer, feats):
                acc.append(bank_tokens(f))
        banks = [torch.cat(acc) for acc in per_layer]
        if c.coreset is not None:
            banks = [b[greedy_coreset(b, coreset_size(b.shape[0], c.coreset),
                                      projection_dim=CORESET_PROJECTION_DIM)] for b in banks]
        return [b.to(self._bank_dtype()).contiguous() for b in banks]

    def clear_references(self) -> None:
        """Drop the memory bank: :meth:`predict` is zero-shot again."""
        self.references.clear()

    def weights_fingerprint(self) -> str:
        """A short hash of the vision weights that shape the reference features (patch embedding
        and output projection, rounded to float16), to tell banks of other weights apart."""
        visual = self.backbone.clip.visual
        h = hashlib.sha256()
        for t in (visual.conv1.weight, visual.proj):
            h.update(t.detach().to("cpu", torch.float16).contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

    def save_references(self, path: str | os.PathLike) -> None:
        """Write the memory bank to a safetensors file (atomically), with the backbone, its
        weights' fingerprint, the image size, layers, stream and coreset recorded."""
        from ..errors import S2SWError
        from .references import save_bank

        if not self.num_references:
            raise S2SWError("no references to save: call set_references(images) first")
        save_bank(path, self.references, backbone=str(self.provenance.get("backbone")),
                  weights_fingerprint=self.weights_fingerprint(),
                  meta={"weights": self.provenance.get("weights")})

    def load_references(self, path: str | os.PathLike) -> None:
        """Load a memory bank written by :meth:`save_references`; replaces any previous bank.

        The file is validated (:func:`~s2swclip.model.references.load_bank`) and must have been
        made with this backbone and weights, at this detector's image size, with its
        ``few_shot_layers`` and ``few_shot_stream``; otherwise :class:`S2SWError` says what
        differs.
        """
        f = self.read_references(path)
        self.references.set(f.banks, layers=f.layers, stream=f.stream, num_references=f.num_references,
                            image_size=f.image_size, coreset=f.coreset)

    def read_references(self, path: str | os.PathLike):
        """What :meth:`load_references` would set, without setting it: the validated
        :class:`~s2swclip.model.references.BankFile` with its banks moved to the detector's
        device and precision (the detector is not changed)."""
        from ..errors import S2SWError
        from .references import load_bank

        bb, c = self.backbone, self.config
        f = load_bank(path, embed_dim=bb.embed_dim, patch_size=bb.patch_size,
                      num_layers=len(bb.clip.visual.transformer.resblocks))
        mine = str(self.provenance.get("backbone"))
        checks = (
            (f.backbone == mine, f"the backbone {f.backbone}", f"this detector's is {mine}", "backbone",
             f"backbone {f.backbone}"),
            (f.weights_fingerprint == self.weights_fingerprint(), "other backbone weights",
             "this detector's weights differ", "weights", "weights"),
            (f.image_size == c.image_size, f"{f.image_size} px images", f"this detector uses {c.image_size} px",
             "image_size", f"image_size {f.image_size}"),
            (f.layers == tuple(c.few_shot_layers), f"layers {list(f.layers)}",
             f"this detector uses {list(c.few_shot_layers)}", "few_shot_layers", f"few_shot_layers={tuple(f.layers)}"),
            (f.stream == c.few_shot_stream, f"the {f.stream} stream", f"this detector uses {c.few_shot_stream}",
             "few_shot_stream", f"few_shot_stream={f.stream!r}"),
        )
        for ok, theirs, ours, field, fix in checks:
            if not ok:
                raise S2SWError(f"references file {path} was made with {theirs}, but {ours}: rebuild it "
                                f"from the images, or load it with the matching {fix}", fields=[field])
        f.banks = [b.to(self.device, self._bank_dtype()).contiguous() for b in f.banks]
        return f
