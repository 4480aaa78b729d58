"""What the pipeline reports for one input: :class:`ScoredImage`, scored or not, and the map
statistic :func:`map_fraction_above`."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image

__all__ = ["ScoredImage", "map_fraction_above"]


@dataclass
class ScoredImage:
    """The result for one input, scored or not.

    Attributes:
        index: position in the inputs.
        source: the path (or the uploaded file's name) as given.
        name: the name shown to the user (relative to the inputs' common folder).
        score: image anomaly score in [0, 1]; None when the image could not be scored.
        anomalous: ``score > threshold`` when a threshold is known, else None.
        error, error_code: why the image was not scored (one line; a short code:
            ``missing``, ``unreadable``, ``not_a_regular_file``, ``empty``, ``not_an_image``, ``too_many_pixels``,
            ``corrupt``; ``non_finite`` when the model returned NaN or infinity for it).
        width, height: the original image size.
        map_max, map_mean: statistics of the anomaly map (its own scale, ``[0, map_scale]``).
        map_frac_above: fraction of the map's pixels above the threshold on the score scale
            (see :func:`map_fraction_above`); None without a threshold or a map scale.
        anomaly_map: [S, S] float32 map (dropped once written, see :meth:`release`).
        preview: RGB image, longest side S, for the overlay (dropped likewise).
        pixels: [3, S, S] model input until it is scored.
        sha256: hex digest of the bytes decoded, when the decoder was asked for it
            (``digest=True``; None otherwise, or when the file could not be read).
        timings_ms: ``decode``, ``queue``, ``inference``, ``batch_size``, ``overlay``.
    """

    index: int
    source: str
    name: str
    score: float | None = None
    anomalous: bool | None = None
    error: str | None = None
    error_code: str | None = None
    width: int | None = None
    height: int | None = None
    format: str | None = None
    map_max: float | None = None
    map_mean: float | None = None
    map_frac_above: float | None = None
    anomaly_map: np.ndarray | None = field(default=None, repr=False)
    preview: Image.Image | None = field(default=None, repr=False)
    pixels: np.ndarray | None = field(default=None, repr=False)
    sha256: str | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)

    @property
    def decoded(self) -> bool:
        return self.pixels is not None

    def decide(self, threshold: float | None) -> None:
        self.anomalous = None if threshold is None or self.score is None else bool(self.score > threshold)

    def set_result(self, score: float, amap: np.ndarray, threshold: float | None = None,
                   map_scale: float | None = None) -> None:
        """Record the scorer's output; a NaN or infinite score or map makes this record an error
        (``non_finite``) instead: one bad image never costs the others their results."""
        amap = np.asarray(amap)
        if not (np.isfinite(score) and np.isfinite(amap).all()):
            what = "score" if not np.isfinite(score) else "anomaly map"
            self.error = f"{self.source}: the model returned a non-finite (NaN or infinite) {what}"
            self.error_code = "non_finite"
            self.pixels = self.anomaly_map = None
            self.score = self.anomalous = None
            return
        self.score = float(score)
        self.anomaly_map = amap
        self.map_max = float(amap.max())
        self.map_mean = float(amap.mean())
        self.map_frac_above = (None if threshold is None or map_scale is None
                               else map_fraction_above(amap, threshold, map_scale))
        self.pixels = None
        self.decide(threshold)

    def release(self) -> None:
        """Drop the map, preview and pixels (keep only the numbers)."""
        self.anomaly_map = self.preview = self.pixels = None


def map_fraction_above(amap: np.ndarray, threshold: float, map_scale: float) -> float:
    """Fraction of the pixels of ``amap`` [S, S] whose value divided by ``map_scale`` is above
    ``threshold``: with the detector, the share of the image whose per-layer average anomaly
    probability exceeds the image-score threshold (the area flagged at the image's operating
    point)."""
    m = np.asarray(amap, dtype=np.float64) / float(map_scale)
    return float(np.count_nonzero(m > float(threshold)) / max(1, m.size))
