"""How anomaly maps are coloured: one scale for a whole run, anchored to the threshold.

Maps and scores are on different scales. The image score is an anomaly probability in [0, 1];
the detector's map sums one anomaly probability per feature layer ([0, L], L = the number of
feature layers, then Gaussian-smoothed; the scorer's ``map_scale``). Colours are therefore given
to the map's per-layer average ``u = map / L``, which is on the score's scale: a pixel whose ``u``
is above the image threshold is, per layer, as anomalous as an image at the threshold (the share
of such pixels is the results' ``map_frac_above``). The colour bar is labelled in ``u``.

Scales (``HEATMAP_SCALES``):

* ``fixed`` (default), a threshold known (given, or calibrated on known-good images): the bar
  spans ``[T - d, T + d]`` with ``d = max(min(T, 1 - T), MIN_HALF_WIDTH)``, clipped to [0, 1], so
  the threshold is its middle (light green): pixels above it are yellow to red, pixels below it
  cyan to dark blue. A normal image, ``u`` below the threshold everywhere, stays blue: no red
  spots. The threshold is marked on the bar.
* ``fixed``, no threshold: the range of ``u`` over the run's maps (``predict``: the first
  ``window`` maps, so memory stays bounded, see :class:`OverlayPainter`; ``test``: each class's
  maps; the service and the Ray engine's workers, which draw each image on its own: the whole
  [0, 1], see :func:`standalone_scale`).
* ``image``: each map's own minimum to maximum (the authors' visualisation: shows the structure
  of any map, but a perfectly normal image gets red spots too).

A scorer without ``map_scale`` (L unknown) is coloured in raw map values: a threshold cannot be
placed on them, so ``fixed`` then uses the run's range. NumPy and Pillow only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, Iterable

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["HEATMAP_SCALES", "MIN_HALF_WIDTH", "HeatmapScale", "OverlayPainter", "colorbar_image",
           "fixed_scale", "image_scale", "range_scale", "standalone_scale"]

HEATMAP_SCALES = ("fixed", "image")
#: the least half-width of a threshold-centred bar (a threshold near 0 or 1 still gets a range)
MIN_HALF_WIDTH = 0.05
COLORBAR_HEIGHT = 30  # pixels below an overlay: a 10-pixel gradient, ticks and values


@dataclass(frozen=True)
class HeatmapScale:
    """A colour scale: ``u = map / map_scale`` from ``lo`` (darkest blue) to ``hi`` (darkest
    red), clipped outside; ``threshold`` (on the ``u`` scale) is marked on the colour bar.

    Attributes:
        lo, hi: the ``u`` values at the ends of the bar.
        map_scale: L, the maps' per-layer divisor (1.0: raw map values, L unknown).
        threshold: the threshold marked (None: none).
        source: where the range comes from: ``threshold``, ``run``, ``full`` or ``image``.
    """

    lo: float
    hi: float
    map_scale: float = 1.0
    threshold: float | None = None
    source: str = "threshold"

    @property
    def vmin(self) -> float:
        """``lo`` in map units."""
        return self.lo * self.map_scale

    @property
    def vmax(self) -> float:
        """``hi`` in map units."""
        return self.hi * self.map_scale

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe description (results files, the service's answers)."""
        return {"source": self.source, "lo": self.lo, "hi": self.hi, "threshold": self.threshold,
                "map_scale": self.map_scale,
                "unit": "map / map_scale (per-layer anomaly probability, the score's scale)"
                if self.map_scale != 1.0 else "map value"}


def fixed_scale(threshold: float | None, map_scale: float | None) -> HeatmapScale | None:
    """The threshold-centred scale (see the module docstring); None when it cannot be decided
    up front (no threshold, or no ``map_scale`` to put the threshold on the map's scale)."""
    if threshold is None or not map_scale:
        return None
    t = min(1.0, max(0.0, float(threshold)))
    d = max(min(t, 1.0 - t), MIN_HALF_WIDTH)
    return HeatmapScale(round(max(0.0, t - d), 9), round(min(1.0, t + d), 9), float(map_scale), float(threshold),
                        "threshold")


def range_scale(maps: Iterable[np.ndarray], map_scale: float | None, threshold: float | None = None,
                source: str = "run") -> HeatmapScale:
    """The range of ``u`` over ``maps`` (each [H, W]); ``threshold`` marked when on the scale."""
    lo, hi = math.inf, -math.inf
    for m in maps:
        lo, hi = min(lo, float(np.min(m))), max(hi, float(np.max(m)))
    div = float(map_scale) if map_scale else 1.0
    if not math.isfinite(lo):  # no maps
        lo, hi = 0.0, div
    mark = threshold if threshold is not None and map_scale else None
    return HeatmapScale(lo / div, hi / div, div, mark, source)


def image_scale(amap: np.ndarray, map_scale: float | None, threshold: float | None = None) -> HeatmapScale:
    """One map's own range (the ``image`` scale)."""
    return range_scale([amap], map_scale, threshold, source="image")


def standalone_scale(mode: str, amap: np.ndarray, threshold: float | None, map_scale: float | None) -> HeatmapScale:
    """The scale of an overlay drawn without the rest of its run (the service's answers, the Ray
    engine's workers): ``fixed`` is the threshold-centred scale, or the whole [0, 1] without a
    threshold; ``image`` is the map's own range."""
    if mode == "fixed" and map_scale:
        return fixed_scale(threshold, map_scale) or HeatmapScale(0.0, 1.0, float(map_scale), None, "full")
    return image_scale(amap, map_scale, threshold)


# ----------------------------------------------------------------------------------- drawing
def _font():
    try:
        return ImageFont.load_default(size=11)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def _label(v: float) -> str:
    return f"{v:.3f}" if abs(v) < 10 else f"{v:.4g}"


def colorbar_image(width: int, scale: HeatmapScale) -> Image.Image:
    """A ``width`` x :data:`COLORBAR_HEIGHT` RGB strip: the jet gradient from ``scale.lo`` to
    ``scale.hi``, their values at the ends and the threshold, when on the bar, marked with a
    black tick and its value. A new image each call (drawn once per width and scale: a run's
    overlays share one, and drawing its text costs more than the rest of a small overlay)."""
    return _colorbar(int(width), float(scale.lo), float(scale.hi),
                     None if scale.threshold is None else float(scale.threshold)).copy()


@lru_cache(maxsize=64)
def _colorbar(width: int, lo: float, hi: float, threshold: float | None) -> Image.Image:
    from .figures import jet_colormap

    scale = HeatmapScale(lo, hi, threshold=threshold)
    strip = Image.new("RGB", (width, COLORBAR_HEIGHT), (255, 255, 255))
    x0, x1 = 3, max(4, width - 3)
    ramp = jet_colormap(np.linspace(0.0, 1.0, x1 - x0, dtype=np.float32))  # [n, 3]
    strip.paste(Image.fromarray(np.repeat(ramp[None], 10, axis=0)), (x0, 2))
    draw = ImageDraw.Draw(strip)
    font = _font()
    left, right = _label(scale.lo), _label(scale.hi)
    draw.text((x0, 14), left, fill=(0, 0, 0), font=font)
    right_w = draw.textlength(right, font=font)
    draw.text((x1 - right_w, 14), right, fill=(0, 0, 0), font=font)
    t = scale.threshold
    if t is not None and scale.hi > scale.lo and scale.lo <= t <= scale.hi:
        x = x0 + (t - scale.lo) / (scale.hi - scale.lo) * (x1 - x0 - 1)
        draw.line([(x, 0), (x, 13)], fill=(0, 0, 0), width=2)
        text = f"T {_label(t)}"
        tw = draw.textlength(text, font=font)
        tx = min(max(x - tw / 2, x0), x1 - tw)
        if tx > x0 + draw.textlength(left, font=font) + 4 and tx + tw < x1 - right_w - 4:
            draw.text((tx, 14), text, fill=(0, 0, 0), font=font)
    return strip


class OverlayPainter:
    """Draws a run's overlays on one scale with bounded memory (``predict``).

    With a threshold-centred scale (or ``image`` scaling) every overlay is drawn at once. When
    the fixed scale must come from the run's range, the first ``window`` maps (and previews) are
    held until the window is full (or the run ends), the scale is their range, and every later
    overlay is drawn on it as it comes: memory is ``window`` maps and previews at most.

    Args:
        mode: ``fixed`` or ``image``.
        threshold: the run's threshold (None: none).
        map_scale: the scorer's ``map_scale`` (None: unknown).
        draw: ``draw(preview, amap, scale) -> bytes`` (the overlay PNG).
        write: ``write(target, png)``.
        window: maps that decide a run-range scale.
        submit: ``submit(fn, *args)`` runs one overlay's drawing and writing (default: at once,
            in the caller's thread; a worker pool's ``submit`` lets them overlap the model).
            The scale is always decided in the caller's thread.
    """

    def __init__(self, mode: str, threshold: float | None, map_scale: float | None,
                 draw: Callable[[Image.Image, np.ndarray, HeatmapScale], bytes],
                 write: Callable[[Any, bytes], None], window: int = 32,
                 submit: Callable[..., Any] | None = None):
        if mode not in HEATMAP_SCALES:
            raise ValueError(f"heatmap scale must be one of {HEATMAP_SCALES}, got {mode!r}")
        self.mode, self.threshold, self.map_scale = mode, threshold, map_scale
        self.draw, self.write, self.window = draw, write, max(1, int(window))
        self.scale = fixed_scale(threshold, map_scale) if mode == "fixed" else None
        self._held: list[tuple[Image.Image, np.ndarray, Any]] = []
        self._submit = submit

    def _paint(self, preview: Image.Image, amap: np.ndarray, scale: HeatmapScale, target: Any) -> None:
        if self._submit is None:
            self.write(target, self.draw(preview, amap, scale))
        else:
            self._submit(lambda: self.write(target, self.draw(preview, amap, scale)))

    def add(self, preview: Image.Image, amap: np.ndarray, target: Any) -> None:
        """Draw (or hold) the overlay of one map, to be written to ``target``."""
        if self.mode == "image":
            self._paint(preview, amap, image_scale(amap, self.map_scale, self.threshold), target)
        elif self.scale is not None:
            self._paint(preview, amap, self.scale, target)
        else:
            self._held.append((preview, amap, target))
            if len(self._held) >= self.window:
                self.flush()

    def flush(self) -> None:
        """Decide the run-range scale from the held maps (if still open) and draw them."""
        if self._held and self.scale is None:
            self.scale = range_scale([m for _, m, _ in self._held], self.map_scale, self.threshold)
        held, self._held = self._held, []
        for preview, amap, target in held:
            self._paint(preview, amap, self.scale, target)

    def describe(self) -> dict[str, Any] | None:
        """The scale used, for the results file (per-image scaling: ``{"source": "image"}``)."""
        if self.mode == "image":
            return {"source": "image"}
        return None if self.scale is None else self.scale.to_dict()
