"""The detector as two OpenVINO IRs: the encoder (fp32, bf16 hint or int8) and the fp32 head.

Each part is captured with ``torch.export`` (portable forms, dynamic batch) and converted with
``openvino.convert_model``; inputs get fixed non-batch shapes and the port names the manifest
lists. The encoder is what runs at reduced precision; the head (entropies, softmax at
temperature 0.07, resampling, smoothing) stays float32, so a bf16/int8 model only carries the
encoder's rounding. With references, the few-shot bank is part of the float32 head.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from ...model.portable import portable_forms
from .graph import GLOBAL, IMAGES, MAPS, SCORES, DetectorGraph, patch_name

__all__ = ["convert_parts", "save_ir"]

log = logging.getLogger(__name__)


def _convert(module: torch.nn.Module, args: tuple, dynamic_shapes, names_in: list[str],
             shapes_in: list[list[int]], names_out: list[str]):
    import openvino as ov

    with torch.no_grad(), portable_forms():
        program = torch.export.export(module, args, dynamic_shapes=dynamic_shapes)
    model = ov.convert_model(program)
    if len(model.inputs) != len(names_in) or len(model.outputs) != len(names_out):
        raise RuntimeError(f"OpenVINO conversion gave {len(model.inputs)} inputs / {len(model.outputs)} outputs, "
                           f"expected {len(names_in)} / {len(names_out)}")
    for port, name in zip(model.inputs, names_in):
        port.get_tensor().set_names({name})
    for port, name in zip(model.outputs, names_out):
        port.get_tensor().set_names({name})
    model.reshape({name: ov.PartialShape(shape) for name, shape in zip(names_in, shapes_in)})
    return model


def convert_parts(graph: DetectorGraph) -> tuple[Any, Any, dict[str, list[str]]]:
    """Convert the encoder and the head of ``graph``.

    Returns:
        ``(encoder, head, names)``: two ``openvino.Model`` and the port names
        (``encoder_in``, ``encoder_out``, ``head_in``, ``head_out``).
    """
    size = graph.image_size
    batch = torch.export.Dim("batch", min=1, max=4096)
    images = torch.zeros(2, 3, size, size)  # batch 2: a batch of 1 would be specialised
    with torch.no_grad():
        features = graph.encoder(images)
    n_global = 1 if graph.encoder.zero_shot else 0
    enc_out = [GLOBAL] * n_global + [patch_name(i) for i in range(len(features) - n_global)]
    log.info("converting the encoder to OpenVINO")
    encoder = _convert(graph.encoder, (images,), ({0: batch},), [IMAGES], [[-1, 3, size, size]], enc_out)
    log.info("converting the head to OpenVINO")
    shapes = [[-1, *f.shape[1:]] for f in features]
    head = _convert(graph.head, tuple(features), (tuple({0: batch} for _ in features),), enc_out, shapes,
                    [SCORES, MAPS])
    names = {"encoder_in": [IMAGES], "encoder_out": enc_out, "head_in": enc_out, "head_out": [SCORES, MAPS]}
    return encoder, head, names


def save_ir(model, path: Path) -> list[str]:
    """Save ``model`` as ``path`` (.xml) + .bin with float32 weights (no fp16 compression);
    returns the file names."""
    import openvino as ov

    ov.save_model(model, str(path), compress_to_fp16=False)
    return [path.name, path.with_suffix(".bin").name]
