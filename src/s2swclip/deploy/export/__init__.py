"""Deployment export: the whole detector to ONNX or OpenVINO (``s2swclip export``).

* :mod:`.graph` — the detector as export-ready modules (text features baked in as constants);
* :mod:`.to_onnx` — one ONNX model (fp32);
* :mod:`.to_openvino` — OpenVINO encoder + head IRs (fp32; bf16 hint; int8 encoder);
* :mod:`.quantize` — NNCF int8 post-training quantisation of the encoder;
* :mod:`.exporter` — :func:`export_detector`: writes the folder, measures the drift.

The exported folder runs without torch in :mod:`s2swclip.deploy.runtime`.
"""

__all__ = ["export_detector"]


def __getattr__(name):  # lazy: importing the package does not import torch
    if name == "export_detector":
        from .exporter import export_detector

        return export_detector
    raise AttributeError(f"module 's2swclip.deploy.export' has no attribute {name!r}")
