"""Procedural synthetic anomaly-detection data with exact defect masks.

Textures (``stripes`` wood grain, ``weave`` fabric, ``marble`` veined noise, ``dots`` perforated
sheet) and objects (``disc`` bottle top, ``pill`` capsule, ``ring`` hex nut) are drawn with
vectorised NumPy; defects (scratch, crack, hole, stain, colour spot, missing part,
contamination) are painted on top, and the mask is exactly the set of pixels the defect painted:
outside the mask a defective image is bit-identical to the defect-free render from the same
seed. Defect colours are chosen to contrast with the local surface, so the defects are visible.

:func:`generate_dataset` writes an MVTec-style tree plus ``meta.json``; it is deterministic
(same seed and arguments -> the same bytes) and every image has its own seed, so the content of
image ``k`` does not depend on how many images are generated.
"""

from .classes import DEFECT_TYPES, OBJECT_FAMILIES, SYNTHETIC_CLASSES, TEXTURE_FAMILIES, class_defects
from .defects import render_sample
from .writer import generate_dataset

__all__ = [
    "TEXTURE_FAMILIES",
    "OBJECT_FAMILIES",
    "DEFECT_TYPES",
    "SYNTHETIC_CLASSES",
    "class_defects",
    "render_sample",
    "generate_dataset",
]
