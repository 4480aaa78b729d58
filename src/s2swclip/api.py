"""The public Python API: :func:`load_detector` (PyTorch) and :func:`load_exported` (torch-free).

``load_detector`` is defined in :mod:`s2swclip.model.factory`; this module is the stable place to
import it from, next to the runtime of exported models.
"""

from __future__ import annotations

from .deploy.runtime import load_exported
from .model.factory import load_detector

__all__ = ["load_detector", "load_exported"]
