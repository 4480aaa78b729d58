"""Session fixtures shared by tests/export and tests/runtime: exported tiny detectors.

Each export of the tiny backbone takes about a minute (tracing and conversion, not the model's
size), so each kind is made once per session. Loaded by ``pytest_plugins`` in tests/conftest.py.
"""

import contextlib
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

#: The CLI options of the ONNX export: 280 px = 20 x 20 patches, N = 401 tokens: more than the
#: 384 pooled tokens (bins that do not divide) and odd (the wavelet's edge padding).
ONNX_SIZE = 280
ONNX_ARGS = ["--backbone", "S2SW-Tiny-24L", "--weights", "none", "--image-size", str(ONNX_SIZE)]
ONNX_THRESHOLD = 0.6


def write_pngs(folder: Path, n: int, seed: int = 0, size=(96, 80)) -> list[Path]:
    """``n`` reproducible random RGB PNGs (different sizes from the model input)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        rng = np.random.default_rng(seed + i)
        arr = rng.integers(0, 256, size=(size[1] + 7 * i, size[0], 3), dtype=np.uint8)
        paths.append(folder / f"img{i:02d}.png")
        Image.fromarray(arr).save(paths[-1])
    return paths


@pytest.fixture(scope="session")
def export_images(tmp_path_factory) -> Path:
    """A folder of three PNGs (calibration / prediction inputs)."""
    folder = tmp_path_factory.mktemp("export_images")
    write_pngs(folder, 3)
    return folder


@pytest.fixture(scope="session")
def onnx_export(tmp_path_factory, export_images):
    """``s2swclip export --format onnx`` of the tiny backbone (random weights and prompts, seeded):
    (folder, the command's stdout)."""
    from s2swclip.cli import main

    out = tmp_path_factory.mktemp("onnx_export") / "model"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(["export", "--format", "onnx", "--out", str(out), "--calibrate", str(export_images),
                     "--threshold", str(ONNX_THRESHOLD), "--quiet", *ONNX_ARGS])
    assert code == 0, buf.getvalue()
    return out, buf.getvalue()


@pytest.fixture(scope="session")
def onnx_detector():
    """The PyTorch detector the ONNX export was made from (same construction as the CLI's)."""
    import s2swclip

    return s2swclip.load_detector("S2SW-Tiny-24L", None, None, image_size=ONNX_SIZE, untrained_ok=True)


@pytest.fixture(scope="session")
def openvino_exports(tmp_path_factory, tiny_detector, export_images):
    """OpenVINO exports of the session's tiny detector (224 px, trained-like prompts), made on
    first use: ``openvino_exports("fp32" | "bf16" | "int8") -> folder``."""
    from s2swclip.deploy.export import export_detector

    made = {}

    def get(precision: str) -> Path:
        if precision not in made:
            out = tmp_path_factory.mktemp(f"openvino_{precision}") / "model"
            export_detector(tiny_detector, out, format="openvino", precision=precision,
                            calibrate_dir=export_images if precision == "int8" else None)
            made[precision] = out
        return made[precision]

    return get
