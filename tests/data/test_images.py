"""The one decoder: formats, first frames, one-line errors with codes, exact preprocessing, budget."""

import io
import os
import struct
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torchvision import transforms
from torchvision.transforms import InterpolationMode

from s2swclip.data.images import (IMAGE_EXTENSIONS, OPENAI_MEAN, OPENAI_STD, ImageError, PixelBudget,
                                  decode_for_model, is_image_name, open_image, preprocess)


def _rgb(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_extension_list_covers_pillow_formats():
    for ext in (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm", ".tga"):
        assert ext in IMAGE_EXTENSIONS
    assert ".txt" not in IMAGE_EXTENSIONS and ".eps" not in IMAGE_EXTENSIONS  # EPS needs Ghostscript
    assert is_image_name("A.GIF") and not is_image_name(".hidden.png") and not is_image_name("x.json")


@pytest.mark.parametrize("w,h,s", [(96, 80, 224), (640, 480, 518), (333, 517, 410), (224, 224, 224)])
def test_preprocess_equals_the_released_torchvision_transform(w, h, s):
    img = Image.fromarray(_rgb(h, w, seed=w))
    ref = transforms.Compose([transforms.Resize((s, s), interpolation=InterpolationMode.BICUBIC),
                              transforms.CenterCrop(s), transforms.ToTensor(),
                              transforms.Normalize(OPENAI_MEAN, OPENAI_STD)])(img).numpy()
    out = preprocess(img, s)
    assert out.dtype == np.float32 and out.shape == (3, s, s)
    assert np.array_equal(out, ref)  # bit for bit


def test_first_frame_of_animations_and_multipage_files(tmp_path):
    frames = [Image.fromarray(np.full((12, 10, 3), v, np.uint8)) for v in (40, 220)]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    frames[0].save(tmp_path / "a.tif", save_all=True, append_images=frames[1:])
    for name in ("a.gif", "a.tif"):
        img = open_image(tmp_path / name)
        assert abs(np.asarray(img.convert("RGB")).astype(int).mean() - 40) <= 2, name


def _png_header_only(w, h):
    """A PNG whose header claims w x h pixels but carries almost no data."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b""))


@pytest.mark.parametrize("case,code", [("missing", "missing"), ("empty", "empty"), ("text", "not_an_image"),
                                       ("truncated", "corrupt"), ("huge", "too_many_pixels"),
                                       ("folder", "unreadable"), ("broken_link", "missing")])
def test_errors_are_one_line_with_a_code(tmp_path, case, code):
    p = tmp_path / "x.png"
    if case == "empty":
        p.write_bytes(b"")
    elif case == "text":
        p.write_text("hello")
    elif case == "truncated":
        buf = io.BytesIO()
        Image.fromarray(_rgb(64, 64)).save(buf, format="PNG")
        p.write_bytes(buf.getvalue()[:200])
    elif case == "huge":
        p.write_bytes(_png_header_only(30000, 30000))
    elif case == "folder":
        p.mkdir()
    elif case == "broken_link":
        p.symlink_to(tmp_path / "gone.png")
    with pytest.raises(ImageError) as e:
        decode_for_model(p, 32, max_pixels=40_000_000)
    assert e.value.code == code and "\n" not in str(e.value)
    if case != "empty":
        assert str(p) in str(e.value)


@pytest.mark.parametrize("side,message", [(12000, r"more than the limit max_pixels 40,000,000; downscale"),
                                          (60000, "too large to decode safely")])
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_huge_header_refused_before_allocating(side, message, monkeypatch):
    """Refused from the header: Pillow's decoder (``ImageFile.load``, which allocates the pixels)
    never runs. Counted, not timed."""
    from PIL import ImageFile

    loads = []
    real_load = ImageFile.ImageFile.load

    def counted_load(self, *args, **kwargs):
        loads.append(self.size)
        return real_load(self, *args, **kwargs)

    monkeypatch.setattr(ImageFile.ImageFile, "load", counted_load)
    buf = io.BytesIO()
    Image.fromarray(_rgb(20, 30)).save(buf, format="PNG")
    decode_for_model(buf.getvalue(), 32, max_pixels=40_000_000)  # the hook sees a real decode
    assert loads and set(loads) == {(30, 20)}
    loads.clear()
    data = _png_header_only(side, side)  # decoding would need 0.4 to 10 GB
    with pytest.raises(ImageError, match=message) as e:
        decode_for_model(data, 32, max_pixels=40_000_000)
    assert e.value.code == "too_many_pixels"
    assert loads == []  # nothing decoded (nor allocated) for the huge header


def test_decode_for_model_reduces_and_keeps_the_original_size():
    buf = io.BytesIO()
    img = Image.fromarray(_rgb(300, 500, seed=3))
    img.save(buf, format="PNG")
    d = decode_for_model(buf.getvalue(), 224)
    assert d.pixels.shape == (3, 224, 224) and np.array_equal(d.pixels, preprocess(img, 224))
    assert (d.width, d.height, d.format) == (500, 300, "png") and d.preview.size == (224, 134)


def test_exif_orientation_is_applied(tmp_path):
    img = Image.fromarray(_rgb(20, 40, seed=4))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    img.save(tmp_path / "r.jpg", exif=exif.tobytes(), quality=95)
    d = decode_for_model(tmp_path / "r.jpg", 32)
    assert (d.width, d.height) == (20, 40)


def test_pixel_budget_caps_what_threads_hold_at_once():
    budget = PixelBudget(100)
    inside, peak, alone, lock = [0], [0], [], threading.Lock()

    def work(n):
        with budget.hold(n):
            with lock:
                inside[0] += min(n, 100)
                peak[0] = max(peak[0], inside[0])
                if n > 100:
                    alone.append(inside[0] == 100)
            time.sleep(0.01)
            with lock:
                inside[0] -= min(n, 100)

    threads = [threading.Thread(target=work, args=(n,)) for n in (60, 60, 30, 30, 40, 250)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert peak[0] <= 100 and budget.peak == 100 and budget.in_use == 0
    assert alone == [True]  # the 250-pixel request (over the cap) ran alone, holding the whole budget


def _unix_socket(folder):
    import socket

    s = socket.socket(socket.AF_UNIX)
    s.bind(str(folder / "s.png"))
    return s


@pytest.mark.parametrize("kind", ["fifo", "socket", "device"])
def test_a_fifo_socket_or_device_is_not_a_regular_file_and_never_blocks(kind):
    import tempfile
    import threading

    with tempfile.TemporaryDirectory(dir="/tmp") as d:  # short: a socket path has <= 107 bytes
        folder = Path(d)
        sock = None
        if kind == "fifo":
            path = folder / "f.png"
            os.mkfifo(path)
        elif kind == "socket":
            sock = _unix_socket(folder)
            path = folder / "s.png"
        else:
            path = "/dev/zero"  # read as a file, it would never end
        box = {}

        def decode():
            try:
                decode_for_model(path, 32)
            except ImageError as e:
                box["error"] = e

        t = threading.Thread(target=decode, daemon=True)
        t.start()
        t.join(20)
        if sock is not None:
            sock.close()
        assert not t.is_alive(), f"decoding a {kind} blocked"
        e = box["error"]
        assert e.code == "not_a_regular_file" and str(path) in str(e) and "\n" not in str(e), e


def test_formats_that_run_external_programs_are_never_opened(tmp_path):
    p = tmp_path / "x.png"  # an EPS file under an image name: Pillow would hand it to Ghostscript
    p.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    with pytest.raises(ImageError) as e:
        decode_for_model(p, 32)
    assert e.value.code == "not_an_image"
