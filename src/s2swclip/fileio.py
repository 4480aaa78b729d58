"""Atomic file writes: a temporary file in the target folder, fsync, ``os.replace``, fsync the folder.

A crash or a full disk never leaves a half-written checkpoint, report, figure or meta.json, and
once a write returns, a power loss cannot undo it. New files get the permissions a plain
``open(path, "w")`` would give them (``0o666`` less the umask).

A process killed between writing the temporary file and ``os.replace`` leaves the temporary
behind, named ``.<name>.<8 random characters>.tmp`` beside ``<name>``;
:func:`remove_temporaries` deletes such leftovers.
"""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path

from .errors import S2SWError, first_line

_TEMPORARY = re.compile(r"^\.(?P<target>.+)\.[a-z0-9_]{8}\.tmp$")


def atomic_write_bytes(path: str | os.PathLike, data: bytes, make_parents: bool = True) -> None:
    """Write ``data`` to ``path`` atomically and durably; missing parent folders are created
    unless ``make_parents`` is False (then a missing folder is an OSError)."""
    path = Path(path)
    if make_parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temporary(path)
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
    _fsync_folder(path.parent)


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
    _probe_folder(existing, out, flag)
    return out


def _probe_folder(existing: Path, out: Path, flag: str) -> None:
    """Create and remove an empty folder in ``existing``: permissions alone do not tell (root may
    write anywhere, yet not under /proc or on a read-only mount). Leaves nothing behind."""
    probe = existing / f".s2swclip-probe-{secrets.token_hex(4)}"
    try:
        probe.mkdir()
    except OSError as err:
        raise S2SWError(f"cannot create {flag} {out}: {first_line(err)} in {existing}; "
                        f"choose another folder") from None
    probe.rmdir()


def remove_temporaries(folder: str | os.PathLike, target: re.Pattern[str]) -> list[Path]:
    """Delete the temporary files that crashed atomic writes left in ``folder`` for targets whose
    name matches ``target`` (``re.fullmatch``). Returns the paths removed."""
    removed = []
    for entry in os.scandir(folder):
        m = _TEMPORARY.match(entry.name)
        if m and target.fullmatch(m["target"]) and entry.is_file(follow_symlinks=False):
            try:
                os.unlink(entry.path)
            except FileNotFoundError:
                continue
            removed.append(Path(entry.path))
    if removed:
        _fsync_folder(Path(folder))
    return removed


def _create_temporary(path: Path) -> tuple[int, Path]:
    """Create ``.<name>.<random>.tmp`` beside ``path`` exclusively, mode 0o666 less the umask."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary file name beside {path}")


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX; folders cannot be opened on Windows)."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
