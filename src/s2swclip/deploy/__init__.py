"""Deployment: :mod:`.export` (torch side: the detector to ONNX / OpenVINO) and :mod:`.runtime`
(torch-free: running an exported folder)."""
