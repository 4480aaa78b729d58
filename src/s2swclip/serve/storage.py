"""``--save DIR``: originals, overlays and a ``results.jsonl`` log, under a disk cap.

Layout under the folder::

    uploads/<request>_<index>_<name>.<ext>    the uploaded bytes as received
    overlays/<request>_<index>_<name>.png     the heatmap overlay
    results.jsonl                             one JSON object per saved file

Names are sanitised (:func:`sanitise_name`) and checked to stay inside the folder. Every file is
written atomically (temporary file, fsync, rename), so a crash never leaves a half-written image;
each log line is appended with one ``write`` and fsynced, under a lock.

The cap (``max_bytes``, from ``--save-max-mb``) counts the bytes already in the folder when the
store opens (walked once) plus everything it writes. A save that would cross it writes nothing
and answers ``{"saved": False, "reason": ...}``; the request itself is still answered.
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
import threading
from pathlib import Path

from ..errors import S2SWError
from ..fileio import atomic_write_bytes

logger = logging.getLogger(__name__)

#: File extension for each Pillow format name (lower case) of an upload; others get ``.bin``.
FORMAT_EXTENSIONS = {"jpeg": ".jpg", "png": ".png", "bmp": ".bmp", "tiff": ".tif", "webp": ".webp",
                     "gif": ".gif", "ppm": ".ppm", "mpo": ".jpg"}


def sanitise_name(name: str | None, max_len: int = 80) -> str:
    """A file-name stem safe on any file system: ``[A-Za-z0-9._-]`` only, no leading dots,
    no directory parts, at most ``max_len`` characters; ``image`` when nothing is left."""
    base = re.split(r"[\\/]", name or "")[-1]
    stem = base.rsplit(".", 1)[0] if "." in base.strip(".") else base
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._-")
    stem = re.sub(r"\.{2,}", ".", stem)[:max_len].strip("._-")
    return stem or "image"


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n} bytes"


def folder_bytes(root: Path) -> int:
    """Total size of the regular files under ``root`` (symbolic links not followed)."""
    total = 0
    for dirpath, _, files in os.walk(root, followlinks=False):
        for f in files:
            try:
                st = os.lstat(os.path.join(dirpath, f))
            except OSError:  # vanished or unreadable: nothing to count
                continue
            if stat.S_ISREG(st.st_mode):
                total += st.st_size
    return total


class SaveStore:
    """Writes uploads, overlays and ``results.jsonl`` under ``root``, within ``max_bytes``.

    Thread-safe: :meth:`save` may be called from many threads at once; the cap holds for
    their sum.

    Args:
        root: the ``--save`` folder (created with ``uploads/`` and ``overlays/`` if missing).
        max_bytes: most bytes the folder may hold, its existing content included
            (``--save-max-mb`` x 1e6); None: no cap.

    Raises:
        S2SWError: the folder cannot be created, or ``max_bytes`` is not positive.
    """

    def __init__(self, root: str | os.PathLike, max_bytes: int | None = None):
        if max_bytes is not None and int(max_bytes) < 1:
            raise S2SWError(f"--save-max-mb must be positive, got {max_bytes / 1e6:g}")
        self.root = Path(root).expanduser().resolve()
        try:
            (self.root / "uploads").mkdir(parents=True, exist_ok=True)
            (self.root / "overlays").mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise S2SWError(f"cannot create the --save folder {self.root}: {exc.strerror or exc}") from None
        self.max_bytes = None if max_bytes is None else int(max_bytes)
        self._lock = threading.Lock()      # the byte count and the reserved names
        self._log_lock = threading.Lock()  # results.jsonl appends
        self._warned = False
        self._used = folder_bytes(self.root)  # guarded by _lock; includes reservations in flight
        self._taken: set[Path] = set()        # names reserved by saves in flight

    @property
    def used_bytes(self) -> int:
        """Bytes the folder holds by this store's count (existing content + writes + writes in flight)."""
        with self._lock:
            return self._used

    def _path(self, sub: str, name: str) -> Path:
        p = (self.root / sub / name).resolve()
        if p.parent != self.root / sub:  # defence in depth: sanitised names never escape
            raise ValueError(f"refusing to write outside {self.root}: {name!r}")
        return p

    def _reserve(self, paths: list[Path], nbytes: int) -> str | None:
        """Book ``nbytes`` and the names ``paths``; the reason for refusing, or None."""
        with self._lock:
            if self.max_bytes is not None and self._used + nbytes > self.max_bytes:
                return (f"--save folder is full ({_mb(self._used)} of {_mb(self.max_bytes)}; this file needs "
                        f"{_mb(nbytes)}); raise --save-max-mb or empty {self.root}")
            clash = [p for p in paths if p in self._taken or os.path.lexists(p)]
            if clash:
                raise FileExistsError(f"{clash[0]} exists already")
            self._used += nbytes
            self._taken.update(paths)
            return None

    def save(self, request_id: str, index: int, filename: str | None, fmt: str, data: bytes,
             overlay: bytes | None, record: dict) -> dict:
        """Save one scored file: its bytes, its overlay PNG (if any) and a log line.

        Args:
            request_id: unique per request (file names start with it).
            index: the file's position in the request.
            filename: the client's file name (sanitised here; None: ``image``).
            fmt: Pillow format name of ``data`` (chooses the extension, :data:`FORMAT_EXTENSIONS`).
            data: the uploaded bytes; overlay: PNG bytes or None.
            record: JSON-able fields of the log line; ``saved`` (the paths) is added.

        Returns:
            ``{"saved": True, "upload": "uploads/...", "overlay": "overlays/..."}`` (paths relative
            to the folder; ``overlay`` only when given), or ``{"saved": False, "reason": "..."}``
            when the cap would be crossed (nothing written).

        Raises:
            OSError: the disk refused a write (what was written of this save is removed).
        """
        stem = f"{request_id}_{index:02d}_{sanitise_name(filename)}"
        files = [(self._path("uploads", stem + FORMAT_EXTENSIONS.get(fmt, ".bin")), bytes(data))]
        if overlay is not None:
            files.append((self._path("overlays", stem + ".png"), bytes(overlay)))
        paths = {"upload": str(files[0][0].relative_to(self.root))}
        if overlay is not None:
            paths["overlay"] = str(files[1][0].relative_to(self.root))
        line = (json.dumps(dict(record, saved=paths)) + "\n").encode("utf-8")
        need = sum(len(b) for _, b in files) + len(line)
        reason = self._reserve([p for p, _ in files], need)
        if reason is not None:
            (logger.debug if self._warned else logger.warning)("not saving %s: %s", filename, reason)
            self._warned = True
            return {"saved": False, "reason": reason}
        done: list[Path] = []
        try:
            for p, b in files:
                atomic_write_bytes(p, b, make_parents=False)
                done.append(p)
            self._append(line)
        except BaseException:
            for p in done:
                try:
                    p.unlink()
                except OSError:
                    pass
            with self._lock:
                self._used -= need
                self._taken.difference_update(p for p, _ in files)
            raise
        with self._lock:
            self._taken.difference_update(p for p, _ in files)
        return {"saved": True, **paths}

    def _append(self, line: bytes) -> None:
        """Append one log line with a single write, then fsync; one at a time."""
        with self._log_lock:
            fd = os.open(self.root / "results.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
            try:
                view = memoryview(line)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
