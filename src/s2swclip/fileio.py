"""Atomic file writes: a temporary file in the target folder, fsync, then ``os.replace``.

A crash or a full disk never leaves a half-written checkpoint, report, figure or meta.json.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .errors import S2SWError


def atomic_write_bytes(path: str | os.PathLike, data: bytes, make_parents: bool = True) -> None:
    """Write ``data`` to ``path`` atomically; missing parent folders are created unless
    ``make_parents`` is False (then a missing folder is an OSError)."""
    path = Path(path)
    if make_parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_text(path: str | os.PathLike, text: str, make_parents: bool = True) -> None:
    """Write ``text`` (UTF-8, newlines as given) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"), make_parents)


def check_output_dir(path: str | os.PathLike, flag: str = "--out") -> Path:
    """Refuse an output folder that is an existing file or cannot be created or written, before
    any work is done and without creating anything. Returns the path."""
    out = Path(os.path.expanduser(os.fspath(path)))
    if out.exists() and not out.is_dir():
        raise S2SWError(f"{flag} {out} is an existing file, not a folder: choose a folder")
    existing = out
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise S2SWError(f"cannot create {flag} {out}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise S2SWError(f"cannot write to {flag} {out}: {existing} is not writable; choose another folder")
    return out
