"""The PyTorch detector as a :class:`~s2swclip.inference.pipeline.Scorer`."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .pipeline import available_cores
from .scoring import ScorerBase

__all__ = ["MAX_CPU_STREAMS", "DetectorScorer", "as_scorer"]

#: most batches a detector on the CPU scores at once by default (memory for activations grows with it)
MAX_CPU_STREAMS = 4


class DetectorScorer(ScorerBase):
    """Wraps anything with ``predict(images) -> Prediction`` and ``config.image_size``
    (:class:`~s2swclip.model.detector.S2SWDetector`) for the inference pipeline.

    Args:
        detector: the detector.
        image_size: model input side (default: the detector's configured size).

    ``map_scale`` puts maps on the image score's [0, 1] scale (``map / map_scale``; the
    detector's ``map_scale``, docs/method.md §6.3); None for a model that has none.
    """

    def __init__(self, detector, image_size: int | None = None):
        self.detector = detector
        self.image_size = int(image_size or detector.config.image_size)

    @property
    def map_scale(self) -> float | None:
        return getattr(self.detector, "map_scale", None)

    @property
    def model_streams(self) -> int:
        """Batches worth scoring at once (:class:`~s2swclip.inference.pipeline.InferencePipeline`):
        on the CPU one per group of the current PyTorch threads that the cores hold, at most
        :data:`MAX_CPU_STREAMS` (each call computes on the thread that makes it plus its
        intra-op threads; several small calls keep the cores busier than one call spread over
        them, and their Python and memory-bound steps overlap); on an accelerator 1 (its queue
        already overlaps the host)."""
        device = self._device()
        if device is not None and not device.lower().startswith("cpu"):
            return 1
        return max(1, min(MAX_CPU_STREAMS, available_cores() // max(1, torch.get_num_threads())))

    def score(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = self.detector.predict(torch.from_numpy(np.ascontiguousarray(pixels)))
        return (out.image_scores.detach().float().cpu().numpy(),
                out.anomaly_maps.detach().float().cpu().numpy())

    def _engine_fields(self) -> dict[str, Any]:
        return {"engine": "pytorch"}

    def _provenance(self) -> dict[str, Any]:
        return dict(getattr(self.detector, "provenance", {}) or {})

    def _precision(self) -> str | None:
        return getattr(self.detector.config, "precision", None)

    def _device(self) -> str | None:
        device = getattr(self.detector, "device", None)
        return None if device is None else str(device)

    def _references(self) -> dict[str, Any] | None:
        return _describe_references(self.detector)


def _describe_references(det) -> dict[str, Any] | None:
    """The few-normal-shot mode in use: count and settings, or None when no references are set."""
    count = int(getattr(det, "num_references", 0) or 0)
    if not count:
        return None
    bank = det.references
    return {"count": count, "few_shot_weight": float(det.config.few_shot_weight), "layers": list(bank.layers),
            "stream": bank.stream, "coreset": bank.coreset, "bank_bytes": int(bank.nbytes)}


def as_scorer(model, image_size: int | None = None):
    """A scorer for ``model``: returned as it is when it already has ``score``; a detector is
    wrapped in :class:`DetectorScorer`."""
    if hasattr(model, "score") and hasattr(model, "image_size"):
        return model
    return DetectorScorer(model, image_size)
