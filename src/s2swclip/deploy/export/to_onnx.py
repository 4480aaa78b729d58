"""The whole detector as one ONNX model (``torch.onnx.export``, dynamo exporter).

Opset 18 (scaled-dot-product attention needs >= 14; 18 is what ONNX Runtime and OpenVINO read
without a version conversion). The batch axis is dynamic, the image side fixed. Weights above
1.5 GB go to an external data file next to the model (protobuf's 2 GB limit).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from ...model.portable import portable_forms
from .graph import IMAGES, MAPS, SCORES, DetectorGraph

__all__ = ["OPSET", "export_onnx"]

log = logging.getLogger(__name__)

OPSET = 18
_EXTERNAL_DATA_BYTES = 1_500_000_000


def export_onnx(graph: DetectorGraph, path: Path) -> list[str]:
    """Write ``graph`` to ``path`` (``.onnx``); returns the names of the files written."""
    size = graph.image_size
    example = torch.zeros(2, 3, size, size)  # batch 2: a batch of 1 would be specialised
    batch = torch.export.Dim("batch", min=1, max=4096)
    used = list(graph.encoder.backbone.clip.visual.state_dict().values()) + list(graph.head.state_dict().values())
    weight_bytes = sum(t.numel() * t.element_size() for t in used)  # the text tower is not exported
    external = weight_bytes > _EXTERNAL_DATA_BYTES
    log.info("exporting the detector to ONNX (opset %d, %.0f MB of weights)", OPSET, weight_bytes / 1e6)
    with torch.no_grad(), portable_forms():
        torch.onnx.export(graph, (example,), str(path), dynamo=True, opset_version=OPSET,
                          input_names=[IMAGES], output_names=[SCORES, MAPS],
                          dynamic_shapes=({0: batch},), external_data=external, verbose=False)
    files = [path.name]
    data = path.with_name(path.name + ".data")
    if data.exists():
        files.append(data.name)
    return files
