"""Procedural synthetic anomaly-detection data with exact defect masks.

Textures (``stripes`` wood grain, ``weave`` fabric, ``marble`` veined noise, ``dots`` perforated
sheet) and objects (``disc`` bottle top, ``pill`` capsule, ``ring`` hex nut) are drawn with
vectorised NumPy; defects (scratch, crack, hole, stain, colour spot, missing part,
contamination) are painted on top, and the mask is exactly the set of pixels the defect painted:
outside the mask a defective image is bit-identical to the defect-free render from the same
seed. Defect colours are chosen to contrast with the local surface, so the defects are visible.

:func:`generate_dataset` writes an MVTec-style tree plus ``meta.json``; it is deterministic
(same seed and arguments -> the same bytes) and every image has its own seed, so the content of
image ``k`` does not depend on how many images are generated.
"""

from __future__ import annotations

import os
import shutil
import zlib
from typing import Iterable, Sequence

import numpy as np

from ..errors import S2SWError

__all__ = [
    "TEXTURE_FAMILIES",
    "OBJECT_FAMILIES",
    "DEFECT_TYPES",
    "SYNTHETIC_CLASSES",
    "class_defects",
    "render_sample",
    "generate_dataset",
]

TEXTURE_FAMILIES = ("stripes", "weave", "marble", "dots")
OBJECT_FAMILIES = ("disc", "pill", "ring")
DEFECT_TYPES = ("scratch", "crack", "hole", "stain", "color_spot", "missing_part", "contamination")

#: default class name -> family
SYNTHETIC_CLASSES = {
    "wood": "stripes",
    "fabric": "weave",
    "marble": "marble",
    "perforated": "dots",
    "bottle_cap": "disc",
    "pill": "pill",
    "nut": "ring",
}

_MARKER = ".s2swclip-synthetic"
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _family(cls: str) -> str:
    if cls in SYNTHETIC_CLASSES:
        return SYNTHETIC_CLASSES[cls]
    if cls in TEXTURE_FAMILIES or cls in OBJECT_FAMILIES:
        return cls
    known = ", ".join(list(SYNTHETIC_CLASSES) + [f for f in TEXTURE_FAMILIES + OBJECT_FAMILIES if f not in SYNTHETIC_CLASSES])
    raise S2SWError(f"unknown synthetic class {cls!r} — use one of: {known}.")


def class_defects(cls: str) -> tuple[str, ...]:
    """Defect types generated for a class (``missing_part`` only for object classes)."""
    fam = _family(cls)
    if fam in OBJECT_FAMILIES:
        return DEFECT_TYPES
    return tuple(d for d in DEFECT_TYPES if d != "missing_part")


def _crc(s: str) -> int:
    return zlib.crc32(s.encode("utf-8")) & 0xFFFFFFFF


def _rng(*keys: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(k) & 0xFFFFFFFF for k in keys]))


# --------------------------------------------------------------------------------------------
# noise and geometry primitives
# --------------------------------------------------------------------------------------------
def _value_noise(rng: np.random.Generator, S: int, cells: int) -> np.ndarray:
    """Smooth value noise in [0, 1], ``cells`` lattice cells across the image."""
    cells = max(1, int(cells))
    grid = rng.random((cells + 1, cells + 1), dtype=np.float32)
    t = (np.arange(S, dtype=np.float32) + 0.5) * (cells / S)
    i = np.minimum(t.astype(np.int64), cells - 1)
    f = t - i
    f = f * f * (3.0 - 2.0 * f)
    g0, g1 = grid[i], grid[i + 1]
    a = g0[:, i] * (1.0 - f)[None, :] + g0[:, i + 1] * f[None, :]
    b = g1[:, i] * (1.0 - f)[None, :] + g1[:, i + 1] * f[None, :]
    return a * (1.0 - f)[:, None] + b * f[:, None]


def _fractal(rng: np.random.Generator, S: int, base_cells: int, octaves: int = 4) -> np.ndarray:
    out = np.zeros((S, S), np.float32)
    total = 0.0
    for k in range(octaves):
        w = 0.5**k
        out += w * _value_noise(rng, S, base_cells * 2**k)
        total += w
    return out / total


def _grid(S: int) -> tuple[np.ndarray, np.ndarray]:
    c = (np.arange(S, dtype=np.float32) + 0.5) / S
    return np.meshgrid(c, c, indexing="ij")  # yy, xx in (0, 1)


def _lerp(c0, c1, t: np.ndarray) -> np.ndarray:
    c0 = np.asarray(c0, np.float32)
    c1 = np.asarray(c1, np.float32)
    return c0 + (c1 - c0) * t[..., None]


def _segment_mask(S: int, p0, p1, width: float, out: np.ndarray) -> None:
    """OR into ``out`` the pixels within width/2 of segment p0-p1 (pixel coordinates y, x)."""
    r = width / 2.0
    y0, x0 = p0
    y1, x1 = p1
    ylo, yhi = int(max(0, np.floor(min(y0, y1) - r - 1))), int(min(S, np.ceil(max(y0, y1) + r + 2)))
    xlo, xhi = int(max(0, np.floor(min(x0, x1) - r - 1))), int(min(S, np.ceil(max(x0, x1) + r + 2)))
    if ylo >= yhi or xlo >= xhi:
        return
    py = np.arange(ylo, yhi, dtype=np.float32)[:, None] + 0.5
    px = np.arange(xlo, xhi, dtype=np.float32)[None, :] + 0.5
    dy, dx = y1 - y0, x1 - x0
    L2 = dy * dy + dx * dx
    if L2 < 1e-9:
        t = np.zeros_like(py + px)
    else:
        t = np.clip(((py - y0) * dy + (px - x0) * dx) / L2, 0.0, 1.0)
    d2 = (py - (y0 + t * dy)) ** 2 + (px - (x0 + t * dx)) ** 2
    out[ylo:yhi, xlo:xhi] |= d2 <= r * r


def _polyline_mask(S: int, pts: np.ndarray, width: float) -> np.ndarray:
    m = np.zeros((S, S), bool)
    for a, b in zip(pts[:-1], pts[1:]):
        _segment_mask(S, a, b, width, m)
    return m


def _blob_mask(rng: np.random.Generator, S: int, cy: float, cx: float, r: float, rough: float = 0.3) -> np.ndarray:
    """Irregular star-shaped blob: radius modulated by a few random harmonics of the angle."""
    yy = np.arange(S, dtype=np.float32)[:, None] + 0.5 - cy
    xx = np.arange(S, dtype=np.float32)[None, :] + 0.5 - cx
    ang = np.arctan2(yy, xx)
    rad = np.full_like(ang, 1.0)
    for k in range(2, 6):
        rad = rad + (rough / k) * rng.uniform(-1, 1) * np.cos(k * ang + rng.uniform(0, 2 * np.pi))
    return (yy * yy + xx * xx) <= (r * np.maximum(rad, 0.35)) ** 2


def _disc_mask(S: int, cy: float, cx: float, r: float) -> np.ndarray:
    yy = np.arange(S, dtype=np.float32)[:, None] + 0.5 - cy
    xx = np.arange(S, dtype=np.float32)[None, :] + 0.5 - cx
    return (yy * yy + xx * xx) <= r * r


# --------------------------------------------------------------------------------------------
# class styles and base renders
# --------------------------------------------------------------------------------------------
def _style(cls: str, seed: int) -> dict:
    """Per-class constants (colours, frequencies), fixed for a class and seed."""
    fam = _family(cls)
    r = _rng(seed, _crc(cls), 7)
    jit = lambda c, a=0.06: np.clip(np.asarray(c, np.float32) + r.uniform(-a, a, 3).astype(np.float32), 0, 1)  # noqa: E731
    st: dict = {"family": fam}
    if fam == "stripes":
        st.update(c0=jit((0.45, 0.27, 0.12)), c1=jit((0.78, 0.58, 0.36)), freq=r.uniform(7, 12),
                  angle=r.uniform(-0.3, 0.3), warp=r.uniform(0.03, 0.07), sharp=r.uniform(1.0, 2.0))
    elif fam == "weave":
        st.update(c0=jit((0.18, 0.2, 0.3)), c1=jit((0.55, 0.6, 0.75)), freq=r.uniform(10, 16))
    elif fam == "marble":
        st.update(c0=jit((0.9, 0.9, 0.88), 0.04), c1=jit((0.45, 0.45, 0.5)), freq=r.uniform(2.0, 4.0),
                  turb=r.uniform(2.0, 4.0), angle=r.uniform(0, np.pi))
    elif fam == "dots":
        st.update(c0=jit((0.62, 0.64, 0.66)), c1=jit((0.2, 0.2, 0.22)), freq=r.uniform(9, 14), rad=r.uniform(0.18, 0.3))
    elif fam == "disc":
        st.update(bg=jit((0.12, 0.12, 0.14), 0.03), body=jit((0.75, 0.15, 0.12), 0.08), radius=r.uniform(0.3, 0.36))
    elif fam == "pill":
        st.update(bg=jit((0.2, 0.22, 0.25), 0.03), body=jit((0.92, 0.9, 0.85), 0.04), body2=jit((0.85, 0.5, 0.15), 0.1),
                  length=r.uniform(0.18, 0.24), radius=r.uniform(0.11, 0.14), angle=r.uniform(-0.4, 0.4))
    elif fam == "ring":
        st.update(bg=jit((0.85, 0.85, 0.82), 0.03), body=jit((0.45, 0.47, 0.5), 0.05), radius=r.uniform(0.3, 0.36),
                  hole=r.uniform(0.4, 0.5))
    return st


def _render_texture(st: dict, rng: np.random.Generator, S: int) -> np.ndarray:
    yy, xx = _grid(S)
    fam = st["family"]
    if fam == "stripes":
        th = st["angle"] + rng.uniform(-0.05, 0.05)
        u = xx * np.cos(th) + yy * np.sin(th)
        warp = (_fractal(rng, S, 3, 3) - 0.5) * 2 * st["warp"]
        grain = 0.5 + 0.5 * np.sin(2 * np.pi * st["freq"] * (u + warp) + rng.uniform(0, 2 * np.pi))
        grain = grain ** st["sharp"]
        fine = _value_noise(rng, S, max(8, S // 6))
        return _lerp(st["c0"], st["c1"], grain) * (0.9 + 0.2 * fine)[..., None]
    if fam == "weave":
        f = st["freq"]
        a = xx * f + rng.uniform(0, 1)
        b = yy * f + rng.uniform(0, 1)
        pa = np.sin(np.pi * (a - np.floor(a)))
        pb = np.sin(np.pi * (b - np.floor(b)))
        parity = (np.floor(a) + np.floor(b)) % 2 == 0
        val = np.where(parity, pa * (0.65 + 0.35 * pb), pb * (0.65 + 0.35 * pa))
        fine = _value_noise(rng, S, max(8, S // 8))
        return _lerp(st["c0"], st["c1"], np.clip(val * (0.85 + 0.3 * fine), 0, 1))
    if fam == "marble":
        th = st["angle"] + rng.uniform(-0.2, 0.2)
        u = xx * np.cos(th) + yy * np.sin(th)
        n = _fractal(rng, S, 2, 4)
        vein = np.abs(np.sin(2 * np.pi * (st["freq"] * u + st["turb"] * n)))
        vein = vein**0.35
        return _lerp(st["c1"], st["c0"], vein) * (0.95 + 0.1 * _value_noise(rng, S, 12))[..., None]
    if fam == "dots":
        f = st["freq"]
        a = xx * f + rng.uniform(0, 1)
        b = yy * f + rng.uniform(0, 1)
        fx = a - np.floor(a) - 0.5
        fy = b - np.floor(b) - 0.5
        d = np.sqrt(fx * fx + fy * fy)
        pix = f / S
        alpha = np.clip((st["rad"] - d) / pix + 0.5, 0, 1)
        base = _lerp(st["c0"], st["c0"] * 0.9, _value_noise(rng, S, 4))
        return base * (1 - alpha[..., None]) + np.asarray(st["c1"], np.float32) * alpha[..., None]
    raise AssertionError(fam)


def _hex_sdf(u: np.ndarray, v: np.ndarray, r: float) -> np.ndarray:
    kx, ky, kz = -0.8660254, 0.5, 0.57735027
    px, py = np.abs(u), np.abs(v)
    d = np.minimum(kx * px + ky * py, 0.0)
    px = px - 2 * d * kx
    py = py - 2 * d * ky
    qx = px - np.clip(px, -kz * r, kz * r)
    qy = py - r
    return np.sqrt(qx * qx + qy * qy) * np.sign(qy)


def _render_object(st: dict, rng: np.random.Generator, S: int):
    """Return (image, alpha, background) for an object class."""
    yy, xx = _grid(S)
    fam = st["family"]
    bg = _lerp(st["bg"], np.asarray(st["bg"]) * 1.25, _fractal(rng, S, 2, 2))
    cy, cx = 0.5 + rng.uniform(-0.03, 0.03), 0.5 + rng.uniform(-0.03, 0.03)
    Y, X = yy - cy, xx - cx
    if fam == "disc":
        R = st["radius"] * rng.uniform(0.97, 1.03)
        d = np.sqrt(X * X + Y * Y)
        sdf = d - R
        rr = np.clip(d / R, 0, 1)
        shade = 0.8 + 0.2 * np.cos(np.pi * rr * 3.0) * (rr > 0.35) + 0.1 * (rr < 0.35)
        shade = shade * (1.0 - 0.35 * (rr > 0.9))
        light = 1.0 + 0.15 * (-(X + Y) / (R + 1e-6)).clip(-1, 1)
        col = np.asarray(st["body"], np.float32) * (shade * light)[..., None]
    elif fam == "pill":
        th = st["angle"] + rng.uniform(-0.15, 0.15)
        u = X * np.cos(th) + Y * np.sin(th)
        v = -X * np.sin(th) + Y * np.cos(th)
        L, r = st["length"], st["radius"]
        qu = np.maximum(np.abs(u) - L, 0.0)
        sdf = np.sqrt(qu * qu + v * v) - r
        half = u < 0
        col = np.where(half[..., None], np.asarray(st["body"], np.float32), np.asarray(st["body2"], np.float32))
        hl = np.sqrt(np.clip(1.0 - (v / r) ** 2, 0, 1))
        col = col * (0.7 + 0.3 * hl)[..., None]
    elif fam == "ring":
        R = st["radius"] * rng.uniform(0.97, 1.03)
        th = rng.uniform(0, np.pi / 3)
        u = X * np.cos(th) + Y * np.sin(th)
        v = -X * np.sin(th) + Y * np.cos(th)
        outer = _hex_sdf(u, v, R)
        d = np.sqrt(X * X + Y * Y)
        rh = R * st["hole"]
        sdf = np.maximum(outer, rh - d)
        grad = 0.85 + 0.3 * np.clip((X - Y) / (2 * R), -0.5, 0.5)
        chamfer = np.where(d < rh * 1.25, 0.75, 1.0)
        col = np.asarray(st["body"], np.float32) * (grad * chamfer)[..., None]
    else:
        raise AssertionError(fam)
    alpha = np.clip(0.5 - sdf * S, 0.0, 1.0).astype(np.float32)
    grain = 0.96 + 0.08 * _value_noise(rng, S, max(8, S // 10))
    col = col * grain[..., None]
    img = bg * (1 - alpha[..., None]) + col * alpha[..., None]
    return img, alpha, bg


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
# --------------------------------------------------------------------------------------------
def _save_png(arr: np.ndarray, path: str) -> None:
    from PIL import Image

    Image.fromarray(arr).save(path, format="PNG", compress_level=1)


def _check_count(name: str, n) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise S2SWError(f"{name} must be a non-negative integer, got {n!r}.")
    return int(n)


def generate_dataset(
    out_dir: str | os.PathLike,
    classes: Iterable[str] | None = None,
    n_train_good: int = 20,
    n_test_good: int = 10,
    n_test_defect: int = 14,
    image_size: int = 256,
    seed: int = 0,
    defects: Sequence[str] | None = None,
) -> str:
    """Write a synthetic MVTec-style dataset plus ``meta.json``; returns the absolute ``out_dir``.

    Tree::

        out_dir/<cls>/train/good/000.png              n_train_good normal images
        out_dir/<cls>/test/good/000.png               n_test_good normal images
        out_dir/<cls>/test/<defect>/000.png           n_test_defect defective images per class,
        out_dir/<cls>/ground_truth/<defect>/000_mask.png   spread round-robin over the defects
        out_dir/meta.json                             train = train/good, test = test/*

    ``classes`` are names from :data:`SYNTHETIC_CLASSES` (default: all) or family names;
    ``defects`` restricts the defect types (``missing_part`` is skipped for textures). Masks
    are 0/255 PNGs equal to the pixels the defect changed. Same arguments -> same bytes.

    ``out_dir`` must be empty, missing, or a folder previously written by this function (its
    class folders are then replaced).
    """
    from .builders import build_mvtec_style

    out = os.path.abspath(os.fspath(out_dir))
    names = list(SYNTHETIC_CLASSES) if classes is None else ([classes] if isinstance(classes, str) else list(classes))
    if not names:
        raise S2SWError("generate_dataset: classes is empty — pass at least one class name.")
    for c in names:
        _family(c)
    if len(set(names)) != len(names):
        raise S2SWError("generate_dataset: classes contains duplicates — list each class once.")
    n_train_good = _check_count("n_train_good", n_train_good)
    n_test_good = _check_count("n_test_good", n_test_good)
    n_test_defect = _check_count("n_test_defect", n_test_defect)
    if n_train_good + n_test_good + n_test_defect == 0:
        raise S2SWError("generate_dataset: all image counts are 0 — ask for at least one image.")
    S = int(image_size)
    if S < 16:
        raise S2SWError(f"image_size must be at least 16, got {image_size!r} — use e.g. 256.")
    if defects is not None:
        bad = [d for d in defects if d not in DEFECT_TYPES]
        if bad:
            raise S2SWError(f"unknown defect type(s) {', '.join(bad)} — use: {', '.join(DEFECT_TYPES)}.")
    if os.path.exists(out):
        if not os.path.isdir(out):
            raise S2SWError(f"output path exists and is not a folder: {out} — choose another out_dir.")
        if os.listdir(out) and not os.path.exists(os.path.join(out, _MARKER)):
            raise S2SWError(f"output folder {out} is not empty and was not made by generate_dataset — choose an empty out_dir.")
        for c in os.listdir(out):
            p = os.path.join(out, c)
            if os.path.isdir(p):
                shutil.rmtree(p)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, _MARKER), "w", encoding="utf-8") as fh:
        fh.write("written by s2swclip.data.synthetic.generate_dataset; class folders here are replaced on rerun\n")

    for cls in names:
        kinds = [d for d in class_defects(cls) if defects is None or d in defects]
        if n_test_defect and not kinds:
            raise S2SWError(f"generate_dataset: no allowed defect type for class {cls!r} — widen defects=.")
        cdir = os.path.join(out, cls)
        for split, n, code in (("train", n_train_good, 1), ("test", n_test_good, 2)):
            d = os.path.join(cdir, split, "good")
            os.makedirs(d, exist_ok=True)
            for i in range(n):
                img, _ = render_sample(cls, None, seed=_image_seed(seed, cls, code, i), image_size=S, class_seed=seed)
                _save_png(img, os.path.join(d, f"{i:03d}.png"))
        counters = {k: 0 for k in kinds}
        for i in range(n_test_defect):
            kind = kinds[i % len(kinds)]
            j = counters[kind]
            counters[kind] += 1
            idir = os.path.join(cdir, "test", kind)
            mdir = os.path.join(cdir, "ground_truth", kind)
            os.makedirs(idir, exist_ok=True)
            os.makedirs(mdir, exist_ok=True)
            img, mask = render_sample(cls, kind, seed=_image_seed(seed, cls, 3, i), image_size=S, class_seed=seed)
            _save_png(img, os.path.join(idir, f"{j:03d}.png"))
            _save_png(mask.astype(np.uint8) * 255, os.path.join(mdir, f"{j:03d}_mask.png"))
    build_mvtec_style(out)
    return out


def _image_seed(seed: int, cls: str, code: int, i: int) -> int:
    s = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, _crc(cls), code, i]).generate_state(1)[0]
    return int(s)
