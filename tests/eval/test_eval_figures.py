"""Overlays and curves produce valid PNGs of the expected size."""

import struct

import numpy as np
import pytest

from s2swclip.errors import S2SWError
from s2swclip.eval.curves import save_curves
from s2swclip.viz.figures import heatmap_overlay, jet_colormap, save_overlay

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_size(path):
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == PNG_MAGIC and head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])  # width, height


def test_png_reads_back(tmp_path):
    import matplotlib.image as mpimg

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    p = save_overlay(img, None, rng.random((40, 50)), str(tmp_path / "o.png"))
    arr = mpimg.imread(p)
    assert arr.shape[:2] == (40 + 24, 150)


def test_jet_colormap_ends_and_middle():
    c = jet_colormap(np.array([0.0, 0.5, 1.0]))
    assert c.dtype == np.uint8 and c.shape == (3, 3)
    assert c[0, 2] > 100 and c[0, 0] == 0 and c[0, 1] == 0  # dark blue
    assert c[1, 1] == 255 and c[1, 0] == c[1, 2]  # green middle
    assert c[2, 0] > 100 and c[2, 1] == 0 and c[2, 2] == 0  # dark red


def test_heatmap_overlay():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    amap = np.zeros((20, 30), np.float32)
    amap[5:10, 5:10] = 1.0
    out = heatmap_overlay(img, amap)
    assert out.shape == (20, 30, 3) and out.dtype == np.uint8
    assert np.array_equal(heatmap_overlay(img, amap, alpha=1.0), img)
    pure = heatmap_overlay(img, amap, alpha=0.0)
    assert np.array_equal(pure, jet_colormap(amap))
    # absolute scaling and a constant map
    low = heatmap_overlay(img, amap * 0.1, alpha=0.0, vmin=0, vmax=1)
    assert np.array_equal(low, jet_colormap(amap * 0.1))
    const = heatmap_overlay(img, np.full((20, 30), 3.0), alpha=0.0)
    assert np.array_equal(const, jet_colormap(np.zeros((20, 30))))
    gray = heatmap_overlay(img[..., 0], amap)
    assert gray.shape == (20, 30, 3)
    with pytest.raises(S2SWError, match="resize"):
        heatmap_overlay(img, amap[:-1])
    with pytest.raises(S2SWError, match="uint8"):
        heatmap_overlay(img.astype(np.float32), amap)
    with pytest.raises(S2SWError, match="alpha"):
        heatmap_overlay(img, amap, alpha=2)


@pytest.mark.parametrize("title,mask", [(None, True), ("bottle / 003.png  score 0.93", True), (None, None)])
def test_save_overlay_sizes(tmp_path, title, mask):
    rng = np.random.default_rng(2)
    h, w = 64, 48
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    m = (rng.random((h, w)) > 0.9) if mask else None
    path = tmp_path / "sub" / "x.png"
    out = save_overlay(img, m, rng.random((h, w)), str(path), title=title)
    assert out == str(path)
    assert png_size(path) == (3 * w, h + 24 * (2 if title else 1))
    assert [p.name for p in path.parent.iterdir()] == ["x.png"]


def test_save_overlay_torch_inputs(tmp_path):
    torch = pytest.importorskip("torch")
    img = torch.randint(0, 256, (33, 35, 3), dtype=torch.uint8)
    p = save_overlay(img, torch.zeros(1, 33, 35), torch.rand(1, 33, 35), str(tmp_path / "t.png"))
    assert png_size(p) == (105, 57)


def test_save_curves(tmp_path):
    rng = np.random.default_rng(3)
    y = rng.random(80) < 0.4
    s = rng.random(80) + y
    roc, pr = save_curves(y, s, str(tmp_path / "curves" / "bottle"))
    assert roc.endswith("bottle_roc.png") and pr.endswith("bottle_pr.png")
    assert png_size(roc) == (480, 480) and png_size(pr) == (480, 480)
    with pytest.raises(S2SWError, match="undefined"):
        save_curves(np.zeros(5), np.arange(5.0), str(tmp_path / "none"))
