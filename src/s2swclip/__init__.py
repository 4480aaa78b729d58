"""s2swclip: zero-shot visual anomaly detection with S2SWCLIP on open_clip.

Public API::

    import s2swclip
    det = s2swclip.load_detector(backbone="ViT-L-14-336", weights="openai", prompts="prompts.safetensors",
                                 image_size=518, device="cpu")
    images = torch.stack([det.preprocess(p) for p in ["a.jpg", "b.png"]])  # as `predict` reads them
    out = det.predict(images)      # images: float tensor [B,3,S,S], CLIP-normalised
    out.image_scores               # [B] in [0,1]
    out.anomaly_maps               # [B,S,S], smoothed

    model = s2swclip.load_exported("exported/")   # torch-free runtime of 's2swclip export'
    model.predict(pixels)                         # NumPy in, NumPy out
"""

__version__ = "0.2.0"

__all__ = ["load_detector", "load_detector_and_transform", "load_exported", "S2SWDetector", "Prediction",
           "DetectorConfig", "DetectorSpec", "RunOptions", "S2SWError", "__version__"]

from .errors import S2SWError

_LAZY = {
    "load_detector": ("api", "load_detector"),
    "load_detector_and_transform": ("api", "load_detector_and_transform"),
    "DetectorSpec": ("specs", "DetectorSpec"),
    "RunOptions": ("specs", "RunOptions"),
    "S2SWDetector": ("model.detector", "S2SWDetector"),
    "Prediction": ("model.detector", "Prediction"),
    "DetectorConfig": ("model.config", "DetectorConfig"),
    "load_exported": ("deploy.runtime", "load_exported"),  # torch-free
}


def __getattr__(name):  # lazy: importing the package must not import torch-heavy modules
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(f".{module}", __name__), attr)
    raise AttributeError(f"module 's2swclip' has no attribute {name!r}")
