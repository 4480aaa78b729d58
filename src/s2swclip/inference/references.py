"""Reference images for the few-normal-shot mode, read exactly like the images being scored.

``predict``, ``serve`` (and any engine) use :func:`read_reference_images`: the same input rules
as the images to score (:func:`~s2swclip.inference.inputs.collect_inputs`) and the same decoding
and preprocessing (:func:`~s2swclip.data.images.decode_for_model`: EXIF orientation, RGB
conversion, bicubic resize, OpenAI mean/std). Torch-free.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from ..arrays import available_memory
from ..data.images import ImageError, decode_for_model
from ..errors import S2SWError
from .inputs import collect_inputs

__all__ = ["DEFAULT_MAX_REFERENCES", "ReferenceImages", "apply_references", "read_reference_images",
           "reference_bytes_per_image"]

#: Most reference images read from a folder (``--max-references``): the bank grows with each one.
DEFAULT_MAX_REFERENCES = 1000


@dataclass
class ReferenceImages:
    """Decoded reference images: ``pixels`` float32 [K, 3, S, S] (CLIP-normalised) and the
    absolute ``paths`` they came from, in the same order."""

    pixels: np.ndarray
    paths: list[str]


def read_reference_images(source: str | os.PathLike, image_size: int, *, shots: int | None = None,
                          max_pixels: int | None = None, max_references: int | None = None,
                          bytes_per_image: int | None = None) -> ReferenceImages:
    """Read the known-good images of ``source`` (a folder, an image file or a glob pattern).

    Args:
        source: where the references are (folders are walked recursively, sorted by path).
        image_size: S, the model input side.
        shots: use the first ``shots`` images (sorted by path); None: all of them.
        max_pixels: refuse larger images (from the header, before decoding).
        max_references: refuse more images than this, before reading any.
        bytes_per_image: the memory one reference takes until the bank is built (see
            :func:`reference_bytes_per_image`): more images than the available memory holds are
            refused before reading any.

    Raises:
        S2SWError: one line, when ``source`` holds no image, fewer than ``shots`` images, too
            many, or an image that cannot be used (references are few and chosen: none is skipped
            silently).
    """
    entries = collect_inputs([source], images_only=True)
    if shots is not None:
        if shots < 1:
            raise S2SWError(f"shots must be at least 1, got {shots}", fields=["shots"])
        if len(entries) < shots:
            raise S2SWError(f"reference {source} holds {len(entries)} image{'' if len(entries) == 1 else 's'}, "
                            f"fewer than shots {shots}",
                            fields=["reference", "shots"])
        entries = entries[:shots]
    _check_reference_memory(source, len(entries), max_references, bytes_per_image)
    pixels = np.empty((len(entries), 3, image_size, image_size), np.float32)
    for i, entry in enumerate(entries):
        if entry.problem is not None:
            raise S2SWError(f"reference image unusable: {entry.problem}")
        try:
            pixels[i] = decode_for_model(entry.path, image_size, preview_side=1, max_pixels=max_pixels).pixels
        except ImageError as e:
            raise S2SWError(f"reference image unusable: {e}; remove it from {source}", fields=e.fields) from None
    return ReferenceImages(pixels, [e.path for e in entries])


def _check_reference_memory(source, count: int, max_references: int | None, bytes_per_image: int | None) -> None:
    need = None if bytes_per_image is None else count * int(bytes_per_image)
    shown = "" if need is None else f", about {need / 2**30:.1f} GiB until the bank is built,"
    if max_references is not None and count > max_references:
        raise S2SWError(f"reference {source} holds {count} images{shown}, more than max_references "
                        f"{max_references}; pick fewer with shots K; a coreset keeps memory down afterwards; "
                        f"or raise max_references", fields=["reference", "max_references", "shots", "coreset"])
    free = available_memory()
    if need is not None and free is not None and need > free:
        raise S2SWError(f"reference {source}: {count} images need about {need / 2**30:.1f} GiB until the bank "
                        f"is built, but only {free / 2**30:.1f} GiB of memory is available; use fewer with shots K",
                        fields=["reference", "shots"])


def reference_bytes_per_image(det) -> int:
    """Memory one reference image takes while the bank is built: its float32 model input and its
    patch features for every few-shot layer, twice (collected, then concatenated)."""
    s = int(det.config.image_size)
    tokens = (s // int(det.backbone.patch_size)) ** 2
    return 4 * (3 * s * s + 2 * len(det.config.few_shot_layers) * tokens * int(det.backbone.embed_dim))


def apply_references(det, source: str | os.PathLike, *, shots: int | None = None,
                     max_pixels: int | None = None, max_references: int | None = DEFAULT_MAX_REFERENCES) -> list[str]:
    """Turn on the few-shot mode of ``det`` from ``source``: a references ``.safetensors`` file
    (:meth:`~s2swclip.model.detector.S2SWDetector.save_references`) is loaded, anything else is
    read with :func:`read_reference_images` and encoded. The one way every engine does it.

    Returns:
        The files the bank was made from: the references file, or the images in their order.

    Raises:
        S2SWError: one line, when the references cannot be used.
    """
    import torch

    path = os.path.expanduser(os.fspath(source))
    if os.path.isfile(path) and path.endswith(".safetensors"):
        if shots is not None:
            raise S2SWError(f"shots selects images of a folder, but reference {path} is a references file",
                            fields=["shots", "reference"])
        det.load_references(path)
        return [os.path.abspath(path)]
    refs = read_reference_images(source, det.config.image_size, shots=shots, max_pixels=max_pixels,
                                 max_references=max_references, bytes_per_image=reference_bytes_per_image(det))
    det.set_references(torch.from_numpy(refs.pixels))
    return refs.paths
