"""The dataset registry: the one list of dataset names, their aliases and :func:`build_meta`.

Everything that names datasets (``s2swclip build-meta``'s help, the README) derives from
:data:`BUILDERS` / :func:`describe`. Names are matched ignoring case, spaces, ``-`` and ``_``.
"""

from __future__ import annotations

import os
import re
from typing import Callable, NamedTuple

from ...errors import S2SWError
from .common import summarize_meta
from .dagm import build_dagm
from .kolektor import build_sdd
from .medical_image_level import build_br35h, build_brainmri, build_headct
from .medical_pixel_level import build_clinicdb, build_colondb, build_endo, build_isic, build_kvasir, build_tn3k
from .mvtec_style import build_btad, build_dtd, build_mpdd, build_mvtec, build_mvtec_style
from .visa import build_visa

__all__ = ["BUILDERS", "build_meta", "describe"]


class _Dataset(NamedTuple):
    title: str
    builder: Callable[..., dict]
    aliases: tuple[str, ...] = ()  # already normalised: lower case, no spaces, '-' or '_'


_DATASETS: dict[str, _Dataset] = {
    "mvtec": _Dataset("MVTec AD", build_mvtec, ("mvtecad",)),
    "visa": _Dataset("VisA", build_visa),
    "mpdd": _Dataset("MPDD", build_mpdd),
    "btad": _Dataset("BTAD", build_btad),
    "sdd": _Dataset("SDD (KolektorSDD, KolektorSDD2)", build_sdd, ("kolektorsdd", "ksdd", "ksdd2", "kolektorsdd2")),
    "dagm": _Dataset("DAGM 2007", build_dagm),
    "dtd": _Dataset("DTD-Synthetic", build_dtd, ("dtdsynthetic",)),
    "headct": _Dataset("HeadCT", build_headct),
    "brainmri": _Dataset("BrainMRI", build_brainmri),
    "br35h": _Dataset("Br35H", build_br35h, ("br35",)),
    "isic": _Dataset("ISIC (ISBI 2016)", build_isic, ("isic2016", "isbi", "isbi2016")),
    "colondb": _Dataset("CVC-ColonDB", build_colondb, ("cvccolondb",)),
    "clinicdb": _Dataset("CVC-ClinicDB", build_clinicdb, ("cvcclinicdb",)),
    "kvasir": _Dataset("Kvasir-SEG", build_kvasir, ("kvasirseg",)),
    "endo": _Dataset("Endo (EndoTect 2020)", build_endo, ("endotect",)),
    "tn3k": _Dataset("TN3K", build_tn3k),
    "folder": _Dataset("your own MVTec-style folder", build_mvtec_style, ("mvtecstyle", "custom", "generic", "own", "user")),
}

#: Dataset name -> builder ``f(root, *, write=True, meta_path=None, **options) -> meta dict``.
BUILDERS: dict[str, Callable[..., dict]] = {name: d.builder for name, d in _DATASETS.items()}

_ALIASES = {alias: name for name, d in _DATASETS.items() for alias in d.aliases}


def describe() -> dict[str, str]:
    """``{name: title}`` for every dataset, in :data:`BUILDERS` order (e.g. ``"sdd"`` ->
    ``"SDD (KolektorSDD, KolektorSDD2)"``), for help texts."""
    return {name: d.title for name, d in _DATASETS.items()}


def _canonical(name: str) -> str:
    key = re.sub(r"[\s_\-]+", "", str(name).lower())
    if key in BUILDERS:
        return key
    if key in _ALIASES:
        return _ALIASES[key]
    raise S2SWError(f"unknown dataset {name!r} — use one of: {', '.join(BUILDERS)}.")


def build_meta(name: str, root: str | os.PathLike, *, meta_path: str | os.PathLike | None = None, **kwargs) -> dict:
    """Scan ``root`` in the layout of dataset ``name`` and write ``meta.json``; return a summary.

    ``name`` is a key of :data:`BUILDERS` (case, ``-`` and ``_`` ignored; aliases such as
    ``mvtec_ad``, ``kolektorsdd``, ``cvc-clinicdb`` and ``custom`` work). Extra keyword
    arguments go to the builder (e.g. ``split_csv=`` for VisA). The summary is::

        {"dataset": name, "root": abs root, "meta_path": written file,
         "splits": {split: {cls: {"normal": n, "anomaly": n, "with_mask": n}}},
         "total": n, "anomalous_without_mask": n}
    """
    key = _canonical(name)
    root_abs = os.path.abspath(os.fspath(root))
    meta = BUILDERS[key](root_abs, write=True, meta_path=meta_path, **kwargs)
    summary = summarize_meta(meta)
    dest = os.path.abspath(os.fspath(meta_path)) if meta_path else os.path.join(root_abs, "meta.json")
    return {"dataset": key, "root": root_abs, "meta_path": dest, **summary}
