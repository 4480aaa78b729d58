"""Pictures: heat-map overlays (pure NumPy) and per-image panels (PNG).

* :func:`heatmap_overlay` blends a jet-like colour map of an anomaly map into an RGB image; NumPy
  only, so the prediction CLI and the web service can use it without matplotlib.
* :func:`save_overlay` writes ``image | ground truth | heat-map overlay`` side by side. The PNG is
  exactly ``3 * W`` pixels wide and ``H + 24`` high (``H + 48`` with a title): a 24-pixel caption
  band above the panels and, when ``title`` is given, a 24-pixel title band above that; with a
  colour ``scale`` a 36-pixel band below the panels holds the colour bar with its values.
* :func:`new_figure` / :func:`save_figure`: a pyplot-free figure of an exact pixel size, written
  atomically as PNG (also used by :mod:`s2swclip.eval.curves`).

Matplotlib is used through its object API with the Agg canvas (no display, no pyplot state), so
it is safe in servers and threads. Files are written to a temporary name and renamed into place.
"""

from __future__ import annotations

import io
import os
from typing import Any

import numpy as np

from ..arrays import to_numpy
from ..errors import S2SWError, first_line
from ..fileio import atomic_write_bytes

__all__ = ["jet_colormap", "heatmap_overlay", "new_figure", "save_figure", "save_overlay"]

_BAND = 24  # pixels per caption / title band
_COLORBAR_BAND = 36  # pixels below the panels for the colour bar
_DPI = 100


def jet_colormap(values: Any) -> np.ndarray:
    """Jet-like colours (blue -> cyan -> yellow -> red) for values in [0, 1]; uint8 [..., 3]."""
    v = np.clip(np.asarray(values, dtype=np.float32), 0.0, 1.0)[..., None]
    centres = np.array([0.75, 0.5, 0.25], dtype=np.float32)  # r, g, b peaks
    rgb = np.clip(1.5 - np.abs(4.0 * (v - centres)), 0.0, 1.0)
    return np.round(rgb * 255.0).astype(np.uint8)


def _rgb_image(image: Any) -> np.ndarray:
    img = to_numpy(image)
    if img.dtype != np.uint8:
        raise S2SWError(f"image must be uint8 RGB [H,W,3], got dtype {img.dtype}")
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    elif img.ndim == 3 and img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    elif img.ndim == 3 and img.shape[2] == 4:
        img = img[..., :3]
    if img.ndim != 3 or img.shape[2] != 3:
        raise S2SWError(f"image must be RGB [H,W,3], got shape {list(img.shape)}")
    return np.ascontiguousarray(img)


def _map2d(amap: Any, shape: tuple, name: str = "anomaly map") -> np.ndarray:
    a = to_numpy(amap)
    a = np.squeeze(a) if a.ndim > 2 else a
    if a.shape != tuple(shape):
        raise S2SWError(
            f"{name} is {list(a.shape)} but the image is {list(shape)}; resize it to the image first"
        )
    a = a.astype(np.float32)
    if not np.isfinite(a).all():
        raise S2SWError(f"{name} contains NaN or infinite values")
    return a


def _normalise(a: np.ndarray, vmin: float | None, vmax: float | None) -> np.ndarray:
    lo = float(a.min()) if vmin is None else float(vmin)
    hi = float(a.max()) if vmax is None else float(vmax)
    if not hi > lo:
        return np.zeros_like(a)
    return np.clip((a - lo) / (hi - lo), 0.0, 1.0)


def heatmap_overlay(
    image_rgb_uint8: Any,
    amap: Any,
    alpha: float = 0.5,
    *,
    vmin: float | None = None,
    vmax: float | None = None,
) -> np.ndarray:
    """``alpha * image + (1 - alpha) * jet(map)`` as uint8 [H,W,3].

    The map is scaled to [0, 1] with ``vmin``/``vmax`` (default: this map's own min and max, as
    the authors' visualisation does; pass ``vmin=0, vmax=1`` to show absolute scores). A constant
    map is drawn as the lowest colour. ``amap`` must have the image's height and width.
    """
    img = _rgb_image(image_rgb_uint8)
    if not 0.0 <= float(alpha) <= 1.0:
        raise S2SWError(f"alpha must be in [0, 1], got {alpha}")
    a = _normalise(_map2d(amap, img.shape[:2]), vmin, vmax)
    colour = jet_colormap(a).astype(np.float32)
    out = float(alpha) * img.astype(np.float32) + (1.0 - float(alpha)) * colour
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def save_figure(fig, path: str) -> str:
    path = os.fspath(path)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI)
    try:
        atomic_write_bytes(path, buf.getvalue())
    except OSError as err:
        raise S2SWError(f"cannot write figure {path}: {first_line(err)}") from None
    return path


def new_figure(width_px: int, height_px: int):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # +0.5 px guards against int() truncation of width * dpi when the PNG size is computed
    fig = Figure(figsize=((width_px + 0.5) / _DPI, (height_px + 0.5) / _DPI), dpi=_DPI)
    FigureCanvasAgg(fig)
    return fig


def save_overlay(
    image_rgb_uint8: Any,
    mask: Any,
    amap: Any,
    path: str,
    title: str | None = None,
    *,
    vmin: float | None = None,
    vmax: float | None = None,
    alpha: float = 0.5,
    scale=None,
) -> str:
    """Write ``image | ground truth | heat-map overlay`` as a PNG; returns ``path``.

    ``mask`` may be ``None`` (the middle panel then says so). ``scale``: a
    :class:`~s2swclip.viz.heatmap.HeatmapScale` (instead of ``vmin``/``vmax``); its colour
    bar, with its values and threshold, is drawn under the overlay. See the module docstring for
    the exact output size.
    """
    img = _rgb_image(image_rgb_uint8)
    h, w = img.shape[:2]
    if scale is not None:
        vmin, vmax = scale.vmin, scale.vmax
    over = heatmap_overlay(img, amap, alpha, vmin=vmin, vmax=vmax)
    if mask is None:
        gt = np.full((h, w, 3), 64, dtype=np.uint8)
    else:
        m = _map2d(mask, (h, w), "mask") > 0.5
        gt = np.repeat((m * 255).astype(np.uint8)[..., None], 3, axis=2)

    top = _BAND * (2 if title else 1)
    bottom = _COLORBAR_BAND if scale is not None else 0
    W, H = 3 * w, h + top + bottom
    fig = new_figure(W, H)
    fig.patch.set_facecolor("white")
    captions = ("image", "ground truth" if mask is not None else "no ground truth", "anomaly map")
    for k, (panel, cap) in enumerate(zip((img, gt, over), captions)):
        ax = fig.add_axes((k * w / W, bottom / H, w / W, h / H))
        ax.imshow(panel, interpolation="nearest", aspect="auto")
        ax.set_axis_off()
        fig.text((k + 0.5) * w / W, (bottom + h + _BAND / 2) / H, cap, ha="center", va="center", fontsize=9)
    if title:
        fig.text(0.5, (H - _BAND / 2) / H, str(title), ha="center", va="center", fontsize=10)
    if scale is not None:
        _colorbar(fig, scale, (2 * w + 18) / W, (bottom - 12) / H, (w - 36) / W, 9 / H)
    return save_figure(fig, path)


def _colorbar(fig, scale, x: float, y: float, width: float, height: float) -> None:
    """The jet gradient from ``scale.lo`` to ``scale.hi`` with their values and the threshold
    (figure coordinates of the bar: ``x, y, width, height``)."""
    ax = fig.add_axes((x, y, width, height))
    lo, hi = scale.lo, scale.hi if scale.hi > scale.lo else scale.lo + 1e-9
    ax.imshow(jet_colormap(np.linspace(0, 1, 256))[None], aspect="auto", extent=(lo, hi, 0, 1))
    ticks = [lo, hi]
    if scale.threshold is not None and lo <= scale.threshold <= hi:
        ax.axvline(scale.threshold, color="black", lw=1.5)
        ticks.insert(1, scale.threshold)
    ax.set_yticks([])
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{t:.3f}" for t in ticks], fontsize=7)
    ax.tick_params(axis="x", length=2, pad=1)
