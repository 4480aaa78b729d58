"""Session fixtures shared by tests/export and tests/runtime: exported tiny detectors.

Exports are made of the shallow backbone (S2SW-Tiny-4L: tracing and conversion time grows with the
number of layers, not with the model's size), each kind once per session. Loaded by ``pytest_plugins`` in tests/conftest.py.
"""

import contextlib
import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

#: The CLI options of the ONNX export: 280 px = 20 x 20 patches, N = 401 tokens: more than the
#: 384 pooled tokens (bins that do not divide) and odd (the wavelet's edge padding).
ONNX_SIZE = 280
ONNX_ARGS = ["--backbone", "S2SW-Tiny-4L", "--weights", "none", "--image-size", str(ONNX_SIZE)]
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

    return s2swclip.load_detector("S2SW-Tiny-4L", None, None, image_size=ONNX_SIZE, untrained_ok=True)


_CONVERTED: dict[str, tuple] = {}  # graph fingerprint -> openvino convert_parts result


def _graph_fingerprint(graph) -> str:
    """SHA-256 of everything an OpenVINO conversion of ``graph`` depends on: its image size and
    feature layouts, its detector's configuration and every tensor (weights, text constants, bank)."""
    h = hashlib.sha256()
    det = graph.head._detector
    h.update(json.dumps([graph.image_size, graph.encoder.layout, graph.encoder.few_shot_layout,
                         graph.encoder.zero_shot, graph.encoder.few_shot_stream,
                         list(graph.encoder.few_shot_layers), det.config.to_dict()]).encode())
    for name, t in graph.state_dict().items():
        h.update(name.encode())
        h.update(str((t.dtype, tuple(t.shape))).encode())
        h.update(t.detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


@contextlib.contextmanager
def shared_openvino_conversion():
    """Within the block, ``export --format openvino`` converts each distinct graph once per session.

    ``to_openvino.convert_parts`` (torch.export of the encoder and the head, then
    ``openvino.convert_model``) depends on the graph only, not on the precision: bf16 is a hint
    written next to the same IR, int8 quantises the converted encoder. So an export of a graph
    whose conversion was made before (same fingerprint: same weights, constants, configuration
    and size) gets copies of that conversion; everything after it (quantisation, saving, manifest,
    drift measurement) runs as it does for a user.
    """
    from s2swclip.deploy.export import to_openvino

    real_convert = to_openvino.convert_parts

    def convert_once(graph):
        key = _graph_fingerprint(graph)
        if key not in _CONVERTED:
            _CONVERTED[key] = real_convert(graph)
        encoder, head, names = _CONVERTED[key]
        # copies: int8 quantisation must not reach the shared float32 encoder
        return encoder.clone(), head.clone(), {k: list(v) for k, v in names.items()}

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(to_openvino, "convert_parts", convert_once)
        yield


@pytest.fixture(scope="session")
def openvino_exports(tmp_path_factory, shallow_detector, export_images):
    """OpenVINO exports of the session's shallow detector (224 px, trained-like prompts), made on
    first use: ``openvino_exports("fp32" | "bf16" | "int8") -> folder``. The three precisions
    share one conversion (:func:`shared_openvino_conversion`)."""
    from s2swclip.deploy.export import export_detector

    made = {}

    def get(precision: str) -> Path:
        if precision not in made:
            out = tmp_path_factory.mktemp(f"openvino_{precision}") / "model"
            with shared_openvino_conversion():
                export_detector(shallow_detector, out, format="openvino", precision=precision,
                                calibrate_dir=export_images if precision == "int8" else None)
            made[precision] = out
        return made[precision]

    return get
