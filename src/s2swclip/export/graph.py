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

More constants are baked in the same way: a few-shot reference bank, for example, becomes
buffers of :class:`HeadGraph` next to the text features, and its term is added in
:meth:`HeadGraph.forward` by the detector's own method.
"""

from __future__ import annotations

import torch
from torch import nn

from ..model.detector import TEXT_SETS, S2SWDetector, TextFeatures

__all__ = ["DetectorGraph", "EncoderGraph", "HeadGraph", "alias_layout"]

#: Names of the graph inputs and outputs (the runtime reads them from ``s2swclip.json``).
IMAGES = "images"
GLOBAL = "global_features"
SCORES = "image_scores"
MAPS = "anomaly_maps"


def patch_name(i: int) -> str:
    return f"patch_features_{i}"


def alias_layout(det: S2SWDetector) -> tuple[int, ...]:
    """For each selected layer, the index of its tensor among the distinct patch features.

    Probed with one small image: e.g. ``(0, 0, 0, 0)`` when all four layers alias the last
    DPAM stream (the faithful default), ``(0, 1, 2, 3)`` without aliasing.
    """
    side = det.backbone.patch_size * 2
    with torch.no_grad():
        _, patches = det.backbone.encode_image(torch.zeros(1, 3, side, side, device=det.device))
    order: dict[int, int] = {}
    return tuple(order.setdefault(id(p), len(order)) for p in patches)


class EncoderGraph(nn.Module):
    """The backbone: images [B, 3, S, S] -> (global features [B, C], distinct patch features
    [B, N, C] ...), float32."""

    def __init__(self, det: S2SWDetector):
        super().__init__()
        self.backbone = det.backbone
        self.layout = alias_layout(det)

    @property
    def n_distinct(self) -> int:
        return max(self.layout) + 1

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        glob, patches = self.backbone.encode_image(images)
        distinct: dict[int, torch.Tensor] = {}
        for p in patches:
            distinct.setdefault(id(p), p)
        return (glob.float(), *(p.float() for p in distinct.values()))


class HeadGraph(nn.Module):
    """Scores and maps from the encoder's features, with the text features as constants.

    Args:
        det: the detector (its configuration and scoring methods; its weights are not part of
            this module).
        layout: :func:`alias_layout` of the detector.
        image_size: S, the side of the maps.
    """

    def __init__(self, det: S2SWDetector, layout: tuple[int, ...], image_size: int):
        super().__init__()
        self.__dict__["_detector"] = det  # not a submodule: no backbone weights in this graph
        self.layout = tuple(layout)
        self.image_size = int(image_size)
        with torch.no_grad():
            text = det.text_features()
        for k in TEXT_SETS:
            self.register_buffer(f"text_{k}", text.unit[k].detach().float().clone())

    def text(self) -> TextFeatures:
        return TextFeatures({}, {k: getattr(self, f"text_{k}") for k in TEXT_SETS})

    def forward(self, global_features: torch.Tensor, *distinct: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(global [B, C], distinct patch features [B, N, C] ...) -> (scores [B], maps [B, S, S])."""
        det, text = self._detector, self.text()
        patches = [distinct[i] for i in self.layout]  # aliased layers: the same tensor object
        return det.image_scores(global_features, text), det.anomaly_maps(patches, text, self.image_size)


class DetectorGraph(nn.Module):
    """The whole detector: images [B, 3, S, S] -> (image scores [B], anomaly maps [B, S, S])."""

    def __init__(self, det: S2SWDetector, image_size: int | None = None):
        super().__init__()
        size = int(image_size or det.config.image_size)
        self.encoder = EncoderGraph(det)
        self.head = HeadGraph(det, self.encoder.layout, size)
        self.image_size = size

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(*self.encoder(images))
