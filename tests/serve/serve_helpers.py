"""Helpers for the inspection-service tests: image bytes, a controllable fake detector."""

import io
import threading
from types import SimpleNamespace

import numpy as np
import torch
from PIL import Image


def png_bytes(w=64, h=48, seed=0, fmt="PNG"):
    """Encoded bytes of a reproducible random RGB image."""
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


class FakeDetector:
    """Stands in for S2SWDetector where a test needs control: counts ``predict`` calls and
    their batch sizes, and can hold a call until ``release()`` (to fill the queue)."""

    def __init__(self, image_size=32, gated=False):
        self.config = SimpleNamespace(image_size=image_size, precision="fp32", feature_layers=(1,))
        self.map_scale = 1.0  # maps in [0, 1]
        self.provenance = {"backbone": "fake", "weights": None, "prompts": None, "prompts_format": None}
        self.device = torch.device("cpu")
        self.batch_sizes = []
        self.entered = threading.Event()   # set when a predict call has started
        self.gate = threading.Event()
        if not gated:
            self.gate.set()
        self._lock = threading.Lock()

    def release(self):
        self.gate.set()

    def predict(self, images):
        with self._lock:
            self.batch_sizes.append(int(images.shape[0]))
        self.entered.set()
        assert self.gate.wait(30), "test never released the fake detector"
        b, s = images.shape[0], images.shape[-1]
        scores = images.mean(dim=(1, 2, 3)).sigmoid()
        maps = torch.linspace(0, 1, s * s).reshape(1, s, s).repeat(b, 1, 1)
        return SimpleNamespace(image_scores=scores, anomaly_maps=maps)
