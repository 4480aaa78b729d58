"""The torch-free runtime of exported detectors (``s2swclip export``).

Needs NumPy, Pillow and ONNX Runtime or OpenVINO only; it never imports torch, so a deployment
can install ``requirements-runtime.txt`` and ``pip install --no-deps s2swclip`` without PyTorch::

    from s2swclip.deploy.runtime import load_exported
    model = load_exported("exported/")      # s2swclip.json + model files
    out = model.predict(images)             # float32 [B, 3, S, S], CLIP-normalised
    out.image_scores, out.anomaly_maps      # [B], [B, S, S] NumPy arrays
    model.predict_files(["a.png", "b.jpg"])  # same preprocessing as the PyTorch path
"""

from .manifest import MANIFEST_NAME, read_manifest
from .model import DEFAULT_INFERENCE_TIMEOUT, ExportedModel, InferenceTimeout, RuntimePrediction, load_exported

__all__ = ["DEFAULT_INFERENCE_TIMEOUT", "ExportedModel", "InferenceTimeout", "MANIFEST_NAME", "RuntimePrediction",
           "load_exported", "read_manifest"]
