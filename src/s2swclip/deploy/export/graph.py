"""The detector as export-ready modules: image in, image score and smoothed anomaly map out.

Export traces a fixed computation, so everything that does not depend on the image is made a
constant here:

* the text features (the four sets, normalised) are computed once in float32 and held as
  buffers, so the trace never sees the prompt learner or the text cache;
* the image size is fixed: the positional embedding is resized at trace time (a constant),
  the batch stays dynamic;
* the layer aliasing of the backbone (which selected layers are the same tensor) is probed
  once and becomes the fixed :attr:`EncoderGraph.layout`.

The computation itself is the detector's own (:meth:`S2SWDetector.image_scores`,
:meth:`S2SWDetector.anomaly_maps`, :meth:`S2SWBackbone.encode_image`), so the graphs compute
what :meth:`S2SWDetector.predict` computes; under export the model functions switch to their
portable forms (:mod:`s2swclip.model.portable`).

Two parts, so that a runtime can run the encoder at a lower precision (bfloat16, int8) and keep
the scoring head in float32: :class:`EncoderGraph` (images -> global feature and the distinct
patch features) and :class:`HeadGraph` (features -> scores and maps); :class:`DetectorGraph`
chains them (the single-file ONNX export).

With references (the few-normal-shot mode), the encoder also returns the few-shot layers'
features from the same backbone pass, and the memory bank becomes float32 buffers of
:class:`HeadGraph` next to the text features; :meth:`HeadGraph.forward` fuses both results
with the detector's own :meth:`S2SWDetector.fuse_few_shot` (with few-shot weight 1 the
zero-shot features and the text are left out of both graphs).
"""

from __future__ import annotations

import torch
from torch import nn

from ...model.detector import TEXT_SETS, DetectorOutput, S2SWDetector, TextFeatures

__all__ = ["DetectorGraph", "EncoderGraph", "HeadGraph", "feature_layout"]

#: Names of the graph inputs and outputs (the runtime reads them from ``s2swclip.json``).
IMAGES = "images"
GLOBAL = "global_features"
SCORES = "image_scores"
MAPS = "anomaly_maps"


def patch_name(i: int) -> str:
    return f"patch_features_{i}"


def uses_zero_shot(det: S2SWDetector) -> bool:
    """False when references are set with few-shot weight 1: only the few-shot map counts."""
    return not det.num_references or float(det.config.few_shot_weight) != 1


def feature_layout(det: S2SWDetector) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Where the features the head needs are among the encoder's distinct feature tensors.

    Probed with one small image: ``(patch_layout, few_shot_layout)``, for each selected layer
    (empty when the zero-shot branch is not used) and each few-shot layer (empty without
    references) the index of its tensor among the distinct ones, in order of first use. E.g.
    ``((0, 0, 0, 0), ())`` when all four layers alias the last DPAM stream (the faithful
    default), ``((0, 0, 0, 0), (1, 2, 3, 4))`` with the default few-shot layers.
    """
    side = det.backbone.patch_size * 2
    bank = det.references
    with torch.no_grad():
        _, patches, *extra = det.backbone.encode_image(torch.zeros(1, 3, side, side, device=det.device),
                                                       extra_layers=bank.layers, extra_stream=bank.stream)
    order: dict[int, int] = {}
    patch = tuple(order.setdefault(id(p), len(order)) for p in patches) if uses_zero_shot(det) else ()
    few_shot = tuple(order.setdefault(id(f), len(order)) for f in (extra[0] if extra else ()))
    return patch, few_shot


class EncoderGraph(nn.Module):
    """The backbone: images [B, 3, S, S] -> (global features [B, C], distinct feature tensors
    [B, N, C] ...), float32; without the global feature when the zero-shot branch is not used.

    Attributes:
        layout, few_shot_layout: :func:`feature_layout` of the detector.
        zero_shot: whether the global and patch features are returned.
    """

    def __init__(self, det: S2SWDetector):
        super().__init__()
        self.backbone = det.backbone
        self.few_shot_layers, self.few_shot_stream = det.references.layers, det.references.stream
        self.zero_shot = uses_zero_shot(det)
        self.layout, self.few_shot_layout = feature_layout(det)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        glob, patches, *extra = self.backbone.encode_image(images, extra_layers=self.few_shot_layers,
                                                           extra_stream=self.few_shot_stream)
        distinct: dict[int, torch.Tensor] = {}
        for p in (patches if self.zero_shot else []) + (extra[0] if extra else []):
            distinct.setdefault(id(p), p)
        head = (glob.float(),) if self.zero_shot else ()
        return (*head, *(p.float() for p in distinct.values()))


class HeadGraph(nn.Module):
    """Scores and maps from the encoder's features, with the text features and the reference
    bank as constants.

    Args:
        det: the detector (its configuration and scoring methods; its weights are not part of
            this module).
        layout, few_shot_layout: :func:`feature_layout` of the detector.
        image_size: S, the side of the maps.
    """

    def __init__(self, det: S2SWDetector, layout: tuple[int, ...], image_size: int,
                 few_shot_layout: tuple[int, ...] = ()):
        super().__init__()
        self.__dict__["_detector"] = det  # not a submodule: no backbone weights in this graph
        self.layout, self.few_shot_layout = tuple(layout), tuple(few_shot_layout)
        self.image_size = int(image_size)
        self.zero_shot = uses_zero_shot(det)
        if self.zero_shot:
            with torch.no_grad():
                text = det.text_features()
            for k in TEXT_SETS:
                self.register_buffer(f"text_{k}", text.unit[k].detach().float().clone())
        self.bank_layers = det.references.layers
        for layer, bank in zip(self.bank_layers, det.references.banks):
            self.register_buffer(f"bank_{layer}", bank.detach().float().clone())
        if len(self.few_shot_layout) != len(self.bank_layers):
            raise ValueError(f"{len(self.few_shot_layout)} few-shot features for {len(self.bank_layers)} banks")

    def text(self) -> TextFeatures:
        return TextFeatures({}, {k: getattr(self, f"text_{k}") for k in TEXT_SETS})

    def banks(self) -> list[torch.Tensor]:
        """The [M_l, C] float32 banks in few-shot layer order (empty without references)."""
        return [getattr(self, f"bank_{layer}") for layer in self.bank_layers]

    def forward(self, *features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(global [B, C] (when zero-shot is used), distinct features [B, N, C] ...) -> (scores [B],
        maps [B, S, S])."""
        det = self._detector
        glob, distinct = (features[0], features[1:]) if self.zero_shot else (None, features)
        patches = [distinct[i] for i in self.layout]  # aliased layers: the same tensor object
        if not self.bank_layers:
            text = self.text()
            return det.image_scores(glob, text), det.anomaly_maps(patches, text, self.image_size)
        out = DetectorOutput(glob, patches, self.text() if self.zero_shot else None,
                             [distinct[i] for i in self.few_shot_layout])
        fused = det.fuse_few_shot(out, self.banks(), self.image_size)
        return fused.image_scores, fused.anomaly_maps


class DetectorGraph(nn.Module):
    """The whole detector: images [B, 3, S, S] -> (image scores [B], anomaly maps [B, S, S])."""

    def __init__(self, det: S2SWDetector, image_size: int | None = None):
        super().__init__()
        size = int(image_size or det.config.image_size)
        self.encoder = EncoderGraph(det)
        self.head = HeadGraph(det, self.encoder.layout, size, self.encoder.few_shot_layout)
        self.image_size = size

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(*self.encoder(images))
