"""The PyTorch detector as a :class:`~s2swclip.inference.pipeline.Scorer`."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["DetectorScorer", "as_scorer"]


class DetectorScorer:
    """Wraps anything with ``predict(images) -> Prediction`` and ``config.image_size``
    (:class:`~s2swclip.model.detector.S2SWDetector`) for the inference pipeline.

    Args:
        detector: the detector.
        image_size: model input side (default: the detector's configured size).

    ``map_scale`` is the number of feature layers: the map sums one anomaly probability per
    layer (docs/method.md §6.3), so ``map / map_scale`` is on the image score's [0, 1] scale.
    """

    def __init__(self, detector, image_size: int | None = None):
        self.detector = detector
        self.image_size = int(image_size or detector.config.image_size)
        self.map_scale = float(len(detector.config.feature_layers))

    def score(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = self.detector.predict(torch.from_numpy(np.ascontiguousarray(pixels)))
        return (out.image_scores.detach().float().cpu().numpy(),
                out.anomaly_maps.detach().float().cpu().numpy())

    def describe(self) -> dict[str, Any]:
        det = self.detector
        info = dict(getattr(det, "provenance", {}) or {})
        device = getattr(det, "device", None)
        return {
            "engine": "pytorch",
            "backbone": info.get("backbone"),
            "weights": info.get("weights"),
            "prompts": info.get("prompts"),
            "prompts_format": info.get("prompts_format"),
            "image_size": self.image_size,
            "precision": getattr(det.config, "precision", None),
            "device": None if device is None else str(device),
            "untrained_prompts": info.get("prompts") is None,
        }


def as_scorer(model, image_size: int | None = None):
    """A scorer for ``model``: returned as it is when it already has ``score``; a detector is
    wrapped in :class:`DetectorScorer`."""
    if hasattr(model, "score") and hasattr(model, "image_size"):
        return model
    return DetectorScorer(model, image_size)
