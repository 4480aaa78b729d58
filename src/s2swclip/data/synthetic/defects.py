"""Defects painted on a surface (their mask is exactly the pixels they changed) and
:func:`render_sample`."""

from __future__ import annotations

import numpy as np

from ...errors import S2SWError
from .classes import DEFECT_TYPES, OBJECT_FAMILIES, _LUMA, _crc, _rng
from .surfaces import _blob_mask, _disc_mask, _polyline_mask, _render_object, _render_texture, _style



# --------------------------------------------------------------------------------------------
# defects
# --------------------------------------------------------------------------------------------
def _contrast_colour(rng: np.random.Generator, ref: np.ndarray) -> np.ndarray:
    """A colour clearly lighter or darker than ``ref`` (mean RGB of the surface)."""
    lum = float(ref @ _LUMA)
    if lum > 0.45:
        return (ref * rng.uniform(0.12, 0.3)).astype(np.float32)
    return (ref + (1.0 - ref) * rng.uniform(0.65, 0.85)).astype(np.float32)


_VIVID = np.array(
    [[0.9, 0.1, 0.1], [0.1, 0.75, 0.15], [0.1, 0.25, 0.95], [0.9, 0.1, 0.85], [0.95, 0.85, 0.05], [0.05, 0.85, 0.9]],
    np.float32,
)


def _pick_point(rng: np.random.Generator, allowed: np.ndarray) -> tuple[float, float]:
    idx = np.flatnonzero(allowed)
    k = idx[rng.integers(len(idx))]
    S = allowed.shape[1]
    return float(k // S) + 0.5, float(k % S) + 0.5


def _defect_shape(kind: str, rng: np.random.Generator, S: int, allowed: np.ndarray, alpha: np.ndarray | None):
    """Geometry of one defect: boolean region (before clipping to ``allowed``)."""
    sc = S / 256.0
    if kind == "missing_part":
        edge = (alpha > 0.05) & (alpha < 0.95)
        if not edge.any():
            edge = allowed
        cy, cx = _pick_point(rng, edge)
        return _disc_mask(S, cy, cx, rng.uniform(22, 38) * sc)
    m = max(2, int(0.1 * S))
    centre_ok = allowed.copy()
    centre_ok[:m] = centre_ok[-m:] = False
    centre_ok[:, :m] = centre_ok[:, -m:] = False
    cy, cx = _pick_point(rng, centre_ok if centre_ok.any() else allowed)
    if kind == "scratch":
        n = int(rng.integers(2, 5))
        length = rng.uniform(50, 110) * sc
        ang = rng.uniform(0, 2 * np.pi)
        steps = length / n
        pts = [(cy, cx)]
        for _ in range(n):
            ang += rng.uniform(-0.25, 0.25)
            y, x = pts[-1]
            pts.append((y + steps * np.sin(ang), x + steps * np.cos(ang)))
        return _polyline_mask(S, np.asarray(pts, np.float32), max(1.6, rng.uniform(2.0, 3.5) * sc))
    if kind == "crack":
        m = np.zeros((S, S), bool)
        n = int(rng.integers(10, 18))
        ang = rng.uniform(0, 2 * np.pi)
        pts = [(cy, cx)]
        for _ in range(n):
            ang += rng.uniform(-0.7, 0.7)
            y, x = pts[-1]
            st = rng.uniform(4, 9) * sc
            pts.append((y + st * np.sin(ang), x + st * np.cos(ang)))
        pts_a = np.asarray(pts, np.float32)
        m |= _polyline_mask(S, pts_a, max(1.6, rng.uniform(2.0, 3.0) * sc))
        for _ in range(int(rng.integers(1, 3))):  # branches
            j = int(rng.integers(1, len(pts) - 1))
            b_ang = ang + rng.uniform(0.6, 1.4) * rng.choice([-1, 1])
            bp = [tuple(pts_a[j])]
            for _ in range(int(rng.integers(3, 7))):
                b_ang += rng.uniform(-0.6, 0.6)
                y, x = bp[-1]
                st = rng.uniform(3, 7) * sc
                bp.append((y + st * np.sin(b_ang), x + st * np.cos(b_ang)))
            m |= _polyline_mask(S, np.asarray(bp, np.float32), max(1.5, 1.8 * sc))
        return m
    if kind == "hole":
        return _blob_mask(rng, S, cy, cx, rng.uniform(6, 13) * sc, rough=0.15)
    if kind == "stain":
        return _blob_mask(rng, S, cy, cx, rng.uniform(12, 26) * sc, rough=0.45)
    if kind == "color_spot":
        return _blob_mask(rng, S, cy, cx, rng.uniform(6, 13) * sc, rough=0.3)
    if kind == "contamination":
        m = np.zeros((S, S), bool)
        for _ in range(int(rng.integers(3, 7))):
            py, px = cy + rng.uniform(-28, 28) * sc, cx + rng.uniform(-28, 28) * sc
            m |= _blob_mask(rng, S, py, px, rng.uniform(2.0, 4.5) * max(sc, 0.6), rough=0.4)
        if rng.random() < 0.6:  # a fibre
            ang = rng.uniform(0, 2 * np.pi)
            pts = [(cy, cx)]
            for _ in range(6):
                ang += rng.uniform(-0.8, 0.8)
                y, x = pts[-1]
                pts.append((y + 6 * sc * np.sin(ang), x + 6 * sc * np.cos(ang)))
            m |= _polyline_mask(S, np.asarray(pts, np.float32), max(1.5, 1.6 * sc))
        return m
    raise S2SWError(f"unknown defect type {kind!r} — use one of: {', '.join(DEFECT_TYPES)}.")


def _apply_defect(kind: str, rng: np.random.Generator, img: np.ndarray, alpha: np.ndarray | None, bg: np.ndarray | None):
    S = img.shape[0]
    allowed = alpha > 0.5 if alpha is not None else np.ones((S, S), bool)
    if kind == "missing_part" and alpha is None:
        raise S2SWError("defect 'missing_part' needs an object class (disc, pill, ring) — drop it for texture classes.")
    min_px = max(12, int(0.0006 * S * S))
    M = None
    for attempt in range(12):
        region = _defect_shape(kind, rng, S, allowed, alpha)
        if kind == "missing_part":
            region = region & (alpha > 0.0)
        else:
            region = region & allowed
        if region.sum() >= min_px or (attempt == 11 and region.any()):
            M = region
            break
    if M is None:  # tiny object: fall back to a disc in the middle of the allowed area
        cy, cx = _pick_point(rng, allowed)
        M = _disc_mask(S, cy, cx, max(3.0, S / 40)) & allowed
    out = img.copy()
    ref = img[M].mean(axis=0)
    k = int(M.sum())
    if kind == "missing_part":
        out[M] = bg[M]
    elif kind in ("scratch", "crack", "contamination"):
        col = _contrast_colour(rng, ref)
        out[M] = col * rng.uniform(0.92, 1.08, (k, 1)).astype(np.float32)
    elif kind == "hole":
        col = _contrast_colour(rng, ref)
        ys, xs = np.nonzero(M)
        cyy, cxx = ys.mean(), xs.mean()
        rr = np.sqrt((ys - cyy) ** 2 + (xs - cxx) ** 2)
        rr = rr / (rr.max() + 1e-6)
        out[M] = col * (0.8 + 0.25 * rr)[:, None]
    elif kind == "stain":
        col = _contrast_colour(rng, ref) * np.array([1.0, 0.85, 0.65], np.float32)
        a = rng.uniform(0.7, 0.85)
        out[M] = img[M] * (1 - a) + col * a
    elif kind == "color_spot":
        dist = np.abs(_VIVID - ref[None, :]).sum(axis=1)
        col = _VIVID[int(np.argmax(dist))]
        out[M] = col * rng.uniform(0.9, 1.05, (k, 1)).astype(np.float32)
    return out, M


def render_sample(cls: str, defect: str | None = None, seed: int = 0, image_size: int = 256, class_seed: int | None = None):
    """Render one image of class ``cls``: returns ``(image uint8 [S,S,3], mask bool [S,S])``.

    ``defect`` is one of :data:`DEFECT_TYPES` (or None for a normal image); ``seed`` fixes the
    image, ``class_seed`` (default ``seed``) the class style. The same call with
    ``defect=None`` renders the identical defect-free surface, which equals the defective
    image everywhere outside the mask.
    """
    S = int(image_size)
    if S < 16:
        raise S2SWError(f"image_size must be at least 16, got {image_size!r} — use e.g. 256.")
    if defect is not None and defect not in DEFECT_TYPES:
        raise S2SWError(f"unknown defect type {defect!r} — use one of: {', '.join(DEFECT_TYPES)}.")
    st = _style(cls, seed if class_seed is None else class_seed)
    rng = _rng(seed, _crc(cls), 11)
    if st["family"] in OBJECT_FAMILIES:
        img, alpha, bg = _render_object(st, rng, S)
    else:
        img, alpha, bg = _render_texture(st, rng, S), None, None
    noise = rng.standard_normal(img.shape, dtype=np.float32) * np.float32(0.012)
    img = np.clip(img + noise, 0.0, 1.0)
    mask = np.zeros((S, S), bool)
    if defect is not None:
        drng = _rng(seed, _crc(cls), _crc(defect), 13)
        if bg is not None:
            bg = np.clip(bg + noise, 0.0, 1.0)
        img, mask = _apply_defect(defect, drng, img, alpha, bg)
        img = np.clip(img, 0.0, 1.0)
    return (img * 255.0 + 0.5).astype(np.uint8), mask


# --------------------------------------------------------------------------------------------
# dataset writer
