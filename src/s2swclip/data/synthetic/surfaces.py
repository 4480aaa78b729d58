"""Defect-free surfaces: noise and geometry primitives, per-class styles, texture and object renders."""

from __future__ import annotations

import numpy as np

from .classes import _crc, _family, _rng


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
