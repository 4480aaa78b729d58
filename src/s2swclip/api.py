"""The public Python API: :func:`load_detector` (PyTorch), :func:`load_detector_and_transform`
(the detector and its preprocessing) and :func:`load_exported` (torch-free).

``load_detector`` builds from keyword arguments (:func:`s2swclip.model.factory.load_detector`) or
from a :class:`~s2swclip.specs.DetectorSpec` (references included), the way the CLI and the Ray
workers build theirs; this module is the stable place to import it from.
"""

from __future__ import annotations

from typing import Any, Callable

from .deploy.runtime import load_exported
from .model import factory
from .specs import DetectorSpec

__all__ = ["DetectorSpec", "load_detector", "load_detector_and_transform", "load_exported"]


def load_detector(backbone: str | DetectorSpec = "ViT-L-14-336", *args: Any, **kwargs: Any):
    """A ready-to-use :class:`~s2swclip.model.detector.S2SWDetector`: ``load_detector(spec)`` for a
    :class:`~s2swclip.specs.DetectorSpec`, else the arguments of
    :func:`s2swclip.model.factory.load_detector`. ``det.preprocess(image)`` makes its inputs."""
    if isinstance(backbone, DetectorSpec):
        if args or kwargs:
            raise TypeError("load_detector(spec) takes no other arguments")
        from .inference.spec import build_detector

        return build_detector(backbone)
    return factory.load_detector(backbone, *args, **kwargs)


load_detector.__doc__ = (load_detector.__doc__ or "") + "\n" + (factory.load_detector.__doc__ or "")


def load_detector_and_transform(*args: Any, **kwargs: Any) -> tuple[Any, Callable]:
    """``(detector, preprocess)`` (as open_clip's ``create_model_and_transforms``): the detector
    of :func:`load_detector` and its preprocessing, which turns an image (path, bytes or PIL
    image) into the float32 ``[3, S, S]`` model input, EXIF orientation applied, as ``predict``
    does::

        det, preprocess = s2swclip.load_detector_and_transform("ViT-L-14-336", "openai", "prompts.safetensors")
        out = det.predict(torch.stack([preprocess("a.jpg"), preprocess("b.jpg")]))
    """
    det = load_detector(*args, **kwargs)
    return det, det.preprocess
