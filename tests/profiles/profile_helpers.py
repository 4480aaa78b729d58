"""Helpers for the profile tests: image bytes, a small detector, a store."""

import io

import numpy as np
from PIL import Image, ImageDraw

from s2swclip.profiles import GoodImage

SIZE = 112  # model input side of the profile tests (8 x 8 tokens with the tiny backbone)


def image_bytes(seed, w=80, h=64, defect=False):
    """PNG bytes of a reproducible 'part': a smooth gradient plus mild noise; ``defect`` paints a
    dark blob in the upper-left quarter."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = 90 + 80 * x / w + rng.normal(0, 4, (h, w))
    img = Image.fromarray(np.clip(np.stack([base, base * 0.9, base * 0.8], -1), 0, 255).astype(np.uint8))
    if defect:
        ImageDraw.Draw(img).ellipse((6, 6, 30, 26), fill=(200, 20, 160))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def goods(n, start=0, **kw):
    return [GoodImage(f"good_{start + i}.png", image_bytes(start + i, **kw)) for i in range(n)]


def small_detector():
    import s2swclip

    return s2swclip.load_detector("S2SW-Tiny-24L", None, None, image_size=SIZE, untrained_ok=True)
