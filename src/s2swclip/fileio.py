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
import stat
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


def check_output_dir(path: str | os.PathLike, field: str = "out_dir") -> Path:
    """Refuse an output folder that is an existing file or cannot be created or written, before
    any work is done and without creating anything. Returns the path. ``field``: the argument
    that gave the folder, named by the :class:`S2SWError` (in its ``fields``)."""
    out = Path(os.path.expanduser(os.fspath(path)))
    if out.exists() and not out.is_dir():
        raise S2SWError(f"{field} {out} is an existing file, not a folder: choose a folder", fields=[field])
    existing = out
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise S2SWError(f"cannot create {field} {out}: {existing} is a file, not a folder", fields=[field])
    if not os.access(existing, os.W_OK | os.X_OK):
        raise S2SWError(f"cannot write to {field} {out}: {existing} is not writable; choose another folder",
                        fields=[field])
    _probe_folder(existing, out, field)
    return out


def _probe_folder(existing: Path, out: Path, field: str) -> None:
    """Create and remove an empty folder in ``existing``: permissions alone do not tell (root may
    write anywhere, yet not under /proc or on a read-only mount). Leaves nothing behind."""
    probe = existing / f".s2swclip-probe-{secrets.token_hex(4)}"
    try:
        probe.mkdir()
    except OSError as err:
        raise S2SWError(f"cannot create {field} {out}: {first_line(err)} in {existing}; "
                        f"choose another folder", fields=[field]) from None
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


# ------------------------------------------------------------------------- reading untrusted files
class NotRegularFileError(OSError):
    """A path that is a FIFO, socket, device or folder where a regular file was expected
    (``kind`` says which); it was not opened for reading, or closed right after ``fstat``."""

    def __init__(self, path: str | os.PathLike, kind: str):
        super().__init__(f"{os.fspath(path)} is {kind}, not a regular file")
        self.path, self.kind = os.fspath(path), kind


def file_kind(mode: int) -> str:
    """What a ``st_mode`` is, in words (``a FIFO``, ``a socket``, ``a device``, ...)."""
    if stat.S_ISREG(mode):
        return "a regular file"
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device file"
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    return "not a file"


def open_regular(path: str | os.PathLike, *, follow_links: bool = True, dir_fd: int | None = None) -> int:
    """Open ``path`` read-only and return the descriptor, refusing anything but a regular file.

    A FIFO, socket or device is refused from ``stat`` before it is opened (opening a device can
    have effects, reading a FIFO blocks for ever); the open itself never blocks (``O_NONBLOCK``)
    and ``fstat`` on the opened descriptor checks again (the path may have been swapped in
    between). ``follow_links=False`` refuses a symbolic link as the last component (``O_NOFOLLOW``;
    OSError ``ELOOP``). Raises :class:`NotRegularFileError` or the OSError of ``open``.
    """
    st = os.stat(path, dir_fd=dir_fd, follow_symlinks=follow_links)
    if not stat.S_ISREG(st.st_mode):
        raise NotRegularFileError(path, file_kind(st.st_mode))
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    if not follow_links:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags, dir_fd=dir_fd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFileError(path, file_kind(st.st_mode))
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)  # a regular file: ordinary reads from here on
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_regular_file(path: str | os.PathLike, limit: int | None = None, *, follow_links: bool = True,
                      dir_fd: int | None = None) -> bytes:
    """The bytes of a regular file (see :func:`open_regular`): at most ``limit + 1`` bytes when
    ``limit`` is given, so that the caller can tell a file over its limit."""
    with os.fdopen(open_regular(path, follow_links=follow_links, dir_fd=dir_fd), "rb") as f:
        return f.read() if limit is None else read_at_most(f, limit + 1)


#: what :func:`read_at_most` reads at a time past the size a file had when opened
_CHUNK = 1 << 20


def read_at_most(f, n: int) -> bytes:
    """At most ``n`` bytes of the open regular file ``f`` (binary, at its start). Memory follows
    the file, not ``n``: ``f.read(n)`` would first allocate ``n`` bytes (a limit of hundreds of
    MB, mapped and unmapped for every small image), so the size from ``fstat`` is read, and
    whatever the file grew by meanwhile in chunks until ``n``."""
    size = os.fstat(f.fileno()).st_size
    data = f.read(min(size + 1, n))  # one byte more than the size: tells the end from growth
    if len(data) <= size or len(data) >= n:
        return data  # the whole file, or the limit reached
    parts, total = [data], len(data)
    while total < n:
        part = f.read(min(_CHUNK, n - total))
        if not part:
            break
        parts.append(part)
        total += len(part)
    return b"".join(parts)


def open_folder_beneath(base: str | os.PathLike, names: list[str], *, create: bool = False) -> int:
    """A descriptor of the folder ``base/names[0]/names[1]/...``, reached without following a
    symbolic link below ``base`` (``base`` itself may be one: the user named it), so that what
    others may write into a shared folder cannot redirect reads or writes outside it.

    ``create`` makes missing folders. Raises OSError: ``ELOOP`` for a link, ``ENOTDIR`` for
    something that is not a folder, ``FileNotFoundError`` for a missing one.
    """
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0)
    fd = os.open(base, flags)
    try:
        for name in names:
            if create:
                try:
                    os.mkdir(name, 0o777, dir_fd=fd)
                except FileExistsError:
                    pass
            nxt = os.open(name, flags | getattr(os, "O_NOFOLLOW", 0), dir_fd=fd)
            os.close(fd)
            fd = nxt
    except BaseException:
        os.close(fd)
        raise
    return fd


def atomic_write_at(dir_fd: int, name: str, data: bytes) -> None:
    """:func:`atomic_write_bytes` of ``name`` inside the folder open as ``dir_fd`` (see
    :func:`open_folder_beneath`); the temporary is created with ``O_EXCL | O_NOFOLLOW``."""
    flags = (os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
             | getattr(os, "O_BINARY", 0))
    for _ in range(100):
        tmp = f".{name}.{secrets.token_hex(4)}.tmp"
        try:
            fd = os.open(tmp, flags, 0o666, dir_fd=dir_fd)
            break
        except FileExistsError:
            continue
    else:
        raise FileExistsError(f"no free temporary file name beside {name}")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        try:
            os.unlink(tmp, dir_fd=dir_fd)
        except FileNotFoundError:
            pass
        raise
    os.fsync(dir_fd)
