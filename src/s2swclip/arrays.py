"""Array conversion shared by every layer: NumPy arrays and torch tensors in, NumPy out.

Torch is never imported here: a tensor is recognised only when torch is already loaded, so the
torch-free runtime and the metrics can use this module without PyTorch installed.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

__all__ = ["available_memory", "to_numpy", "torch_tensor_type"]


def torch_tensor_type():
    """``torch.Tensor`` when torch is already imported, else ``None`` (torch is never imported)."""
    torch = sys.modules.get("torch")
    return getattr(torch, "Tensor", None) if torch is not None else None


def to_numpy(x: Any) -> np.ndarray:
    """``x`` as a NumPy array: tensors are detached and moved to the CPU, float16/bfloat16 widened
    to float32 (NumPy has no bfloat16); anything else goes through :func:`numpy.asarray`."""
    tensor = torch_tensor_type()
    if tensor is not None and isinstance(x, tensor):
        x = x.detach()
        if x.dtype.is_floating_point and x.dtype.itemsize < 4:  # float16 / bfloat16
            x = x.float()
        return x.cpu().numpy()
    return np.asarray(x)


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux ``MemAvailable``); None where unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None
