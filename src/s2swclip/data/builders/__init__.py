"""Write ``meta.json`` dataset descriptions from each dataset's original download layout.

Every builder takes the dataset root, scans it, and returns the meta dict
``{"train": {cls: [item...]}, "test": {cls: [item...]}}`` with paths relative to the root;
with ``write=True`` (the default) it also writes ``<root>/meta.json`` atomically (a temporary
file in the same folder, then ``os.replace``). :func:`build_meta` is the one-call entry point
and returns counts per class and split.

Datasets used only for testing (the medical sets, VisA's test-only variants) get an empty
``"train"`` mapping, like the authors' files.

Modules: :mod:`.registry` (the dataset names, :data:`BUILDERS`, :func:`build_meta`),
:mod:`.common` (folder scanning, mask pairing, writing), and one module per dataset family:
:mod:`.mvtec_style` (MVTec AD, MPDD, BTAD, DTD-Synthetic, your own folders), :mod:`.visa`,
:mod:`.kolektor` (SDD), :mod:`.dagm`, :mod:`.medical_image_level` (HeadCT, BrainMRI, Br35H) and
:mod:`.medical_pixel_level` (ISIC, CVC-ColonDB, CVC-ClinicDB, Kvasir, Endo, TN3K).
"""

from .common import summarize_meta, write_meta
from .dagm import build_dagm
from .kolektor import build_sdd
from .medical_image_level import build_br35h, build_brainmri, build_headct
from .medical_pixel_level import build_clinicdb, build_colondb, build_endo, build_isic, build_kvasir, build_tn3k
from .mvtec_style import build_btad, build_dtd, build_mpdd, build_mvtec, build_mvtec_style
from .registry import BUILDERS, build_meta, describe
from .visa import build_visa

__all__ = [
    "BUILDERS",
    "build_meta",
    "describe",
    "write_meta",
    "summarize_meta",
    "build_mvtec",
    "build_visa",
    "build_mpdd",
    "build_btad",
    "build_sdd",
    "build_dagm",
    "build_dtd",
    "build_headct",
    "build_brainmri",
    "build_br35h",
    "build_isic",
    "build_colondb",
    "build_clinicdb",
    "build_kvasir",
    "build_endo",
    "build_tn3k",
    "build_mvtec_style",
]
