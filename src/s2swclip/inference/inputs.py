"""What to score: files, folders and glob patterns expanded into one list of entries.

Rules (the same for every engine):

* a folder contributes every entry whose name has a readable image extension
  (:data:`s2swclip.data.images.IMAGE_EXTENSIONS`), recursively, hidden entries excluded;
* an entry that cannot be used — a broken symbolic link, a file or sub-folder that cannot be
  read — is NOT dropped: it is listed with the reason, and becomes a "skipped" row;
* symbolic links are kept as the user sees them: two links to the same image are two rows,
  each under its own name (paths are made absolute, never resolved);
* a file named explicitly is taken whatever its extension (the decoder decides);
* the same path given twice is listed once. Entries are sorted by path.

Torch-free.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..data.images import IMAGE_EXTENSIONS, is_image_name
from ..errors import S2SWError

__all__ = ["InputEntry", "collect_inputs", "display_names"]


@dataclass(frozen=True)
class InputEntry:
    """One thing to score: an absolute path, and why it cannot be read when that is known
    before decoding (``problem`` is ``None`` otherwise)."""

    path: str
    problem: str | None = None


def _walk(folder: str, out: list[InputEntry]) -> None:
    """Depth-first listing of a folder; unreadable sub-folders become entries with a problem."""
    try:
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as exc:
        out.append(InputEntry(folder, f"cannot list folder {folder}: {exc.strerror or exc}"))
        return
    for e in entries:
        if e.name.startswith("."):
            continue
        path = os.path.join(folder, e.name)
        try:
            is_dir = e.is_dir()  # follows links: a link to a folder is walked
        except OSError:
            is_dir = False
        if is_dir:
            if e.is_symlink() and _loops(path):
                out.append(InputEntry(path, f"symbolic link loop: {path}"))
                continue
            _walk(path, out)
        elif is_image_name(e.name):
            out.append(InputEntry(path, _problem(path)))


def _loops(path: str) -> bool:
    """A link to a folder that contains it (walking it would never end)."""
    target = os.path.realpath(path)
    parent = os.path.realpath(os.path.dirname(path))
    return parent == target or parent.startswith(target + os.sep)


def _problem(path: str) -> str | None:
    """Why an image entry cannot be read, when it can be told without decoding."""
    if os.path.islink(path) and not os.path.exists(path):
        return f"broken symbolic link: {path} -> {os.readlink(path)}"
    if not os.access(path, os.R_OK):
        return f"cannot read {path}: permission denied"
    return None


def collect_inputs(inputs: Sequence[str | os.PathLike]) -> list[InputEntry]:
    """Expand files, folders and glob patterns into a sorted list of :class:`InputEntry`.

    Raises :class:`S2SWError` for an input that does not exist, and when nothing at all is
    found (problem entries count as found: they are reported, not ignored).
    """
    found: list[InputEntry] = []
    for raw in inputs:
        text = os.path.expanduser(str(raw))
        if any(ch in text for ch in "*?["):
            for m in sorted(glob.glob(text, recursive=True)):
                m = os.path.abspath(m)
                if os.path.isdir(m):
                    continue
                if is_image_name(m):
                    found.append(InputEntry(m, _problem(m)))
        elif os.path.isdir(text):
            _walk(os.path.abspath(text), found)
        elif os.path.lexists(text):
            p = os.path.abspath(text)
            found.append(InputEntry(p, _problem(p)))
        else:
            raise S2SWError(f"input not found: {text} (pass image files, folders or glob patterns)")
    unique = {e.path: e for e in found}
    if not unique:
        raise S2SWError(f"no images found in {', '.join(map(str, inputs))} "
                        f"(looked for {len(IMAGE_EXTENSIONS)} image formats: .png, .jpg, .bmp, .tif, "
                        f".webp, .gif, ...)")
    return [unique[p] for p in sorted(unique)]


def display_names(paths: Sequence[str | os.PathLike]) -> list[str]:
    """Paths relative to their common folder (``crack/000.png``), to tell same-named files
    apart; a single file keeps its base name."""
    if not paths:
        return []
    parents = [os.path.dirname(os.fspath(p)) for p in paths]
    base = os.path.commonpath(parents) if len(set(parents)) > 1 else parents[0]
    return [str(Path(os.path.relpath(os.fspath(p), base))) for p in paths]
