"""Which files of the watched folder are complete and ready to be scored.

Filesystem events (watchdog: inotify, FSEvents, ReadDirectoryChangesW) tell quickly what
changed; a periodic rescan of the folder is the safety net (events are lost on network shares
and when a burst overflows the kernel's queue), and the first scan finds the files present at
start. A file is *ready* when it is complete:

* it was renamed into the folder (an atomic rename: the writer finished under a temporary
  name): ready at once;
* otherwise its size and mtime stayed the same for ``settle`` seconds (a file whose mtime is
  already ``settle`` old when first seen is ready at once: nothing wrote to it since).

Temporary names of cameras and copy tools are never candidates: ``*.tmp``, ``*.part``,
``~*`` and dot-files (and files in dot-folders). Memory: a small record per file not yet
handed out, plus the identity of the files already handled (so a rescan skips them).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ...errors import first_line

__all__ = ["Candidate", "FileDetector", "is_temporary_name"]

log = logging.getLogger(__name__)

_MAX_DIRTY = 100_000  # changed paths remembered between polls; more: rescan instead


def is_temporary_name(name: str) -> bool:
    """A name a writer uses while the file is incomplete, or a hidden file: never scored."""
    low = name.lower()
    return name.startswith((".", "~")) or low.endswith((".tmp", ".part"))


@dataclass
class Candidate:
    """A file of the watched folder: absolute ``path``, ``name`` relative to the folder
    ('/'-separated) and the identity seen (``size``, ``mtime_ns``)."""

    path: str
    name: str
    size: int
    mtime_ns: int
    since: float = 0.0  # monotonic time the identity was first seen unchanged
    atomic: bool = False  # renamed into the folder: complete


def _wanted_events() -> list[type]:
    """The events :meth:`FileDetector._event` acts on. Only these are asked of the kernel: left
    unfiltered, inotify also reports every open and close of a file, and the watcher's own
    reads of each image (to digest and decode it) would come back as events to dispatch."""
    from watchdog import events as ev

    wanted = [ev.FileCreatedEvent, ev.FileModifiedEvent, ev.FileMovedEvent, ev.FileClosedEvent,
              ev.DirCreatedEvent, ev.DirMovedEvent]
    # newer watchdogs: attribute changes (a touch) and lost events have classes of their own,
    # delivered only when the filter names them
    newer = (getattr(ev, name, None) for name in ("FileAttribEvent", "EventsLostEvent"))
    return wanted + [cls for cls in newer if cls is not None]


class FileDetector:
    """Finds complete files under ``root`` (see the module docstring).

    Args:
        root: the watched folder.
        recursive: include sub-folders.
        settle: seconds a file's size and mtime must stay the same.
        rescan: seconds between rescans of the whole folder.
        exclude: a folder never looked into (the output folder, when it lies inside ``root``).
    """

    def __init__(self, root: str | os.PathLike, *, recursive: bool = False, settle: float = 0.5,
                 rescan: float = 5.0, exclude: str | os.PathLike | None = None):
        self.root = os.path.abspath(os.fspath(root))
        self.recursive, self.settle, self.rescan_every = recursive, float(settle), float(rescan)
        self.exclude = None if exclude is None else os.path.abspath(os.fspath(exclude))
        self.tracked: dict[str, Candidate] = {}
        self.known: dict[str, tuple[int, int]] = {}
        self._dirty: dict[str, bool] = {}  # path -> renamed into the folder
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._rescan_due = 0.0
        self._observer = None

    # ------------------------------------------------------------------------- events
    def start(self) -> None:
        """Start the event observer (a platform without one: rescans only)."""
        try:
            from watchdog.events import FileSystemEventHandler
            from watchdog.observers import Observer
        except ImportError:  # pragma: no cover - a declared dependency
            log.warning("watchdog is not installed: new files are found by rescanning every %.0f s", self.rescan_every)
            return
        detector = self

        class _Handler(FileSystemEventHandler):
            def on_any_event(self, event):
                detector._event(event)

        try:
            obs = Observer()
            try:
                obs.schedule(_Handler(), self.root, recursive=self.recursive, event_filter=_wanted_events())
            except TypeError:  # a watchdog without event filters: every event, the unwanted ignored
                obs.schedule(_Handler(), self.root, recursive=self.recursive)
            obs.start()
        except OSError as e:
            log.warning("no filesystem events for %s (%s): rescanning every %.0f s", self.root, e, self.rescan_every)
            return
        self._observer = obs

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._observer = None

    def _event(self, event) -> None:
        kind = event.event_type
        if kind == "events_lost":  # the kernel's queue overflowed: look at everything
            self._rescan_due = 0.0
            self._wake.set()
            return
        if kind not in ("created", "modified", "moved", "closed", "attrib"):
            return
        if event.is_directory:
            if kind in ("created", "moved"):
                self._rescan_due = 0.0  # files may have arrived before the folder was watched
                self._wake.set()
            return
        path = os.fsdecode(event.dest_path if kind == "moved" else event.src_path)
        with self._lock:
            if len(self._dirty) >= _MAX_DIRTY:
                self._rescan_due = 0.0
            else:
                self._dirty[path] = self._dirty.get(path, False) or kind == "moved"
        self._wake.set()

    def wait(self, timeout: float) -> None:
        """Sleep until an event arrives or ``timeout`` seconds pass."""
        self._wake.wait(max(0.0, timeout))
        self._wake.clear()

    # --------------------------------------------------------------------------- polls
    def _name(self, path: str) -> str | None:
        """The name relative to the root, or None when the path is not a candidate."""
        rel = os.path.relpath(path, self.root)
        parts = Path(rel).parts
        if not parts or rel.startswith("..") or (len(parts) > 1 and not self.recursive):
            return None
        if any(is_temporary_name(p) for p in parts):
            return None
        if self.exclude is not None and (path == self.exclude or path.startswith(self.exclude + os.sep)):
            return None
        return "/".join(parts)

    def _walk(self) -> Iterator[os.DirEntry]:
        stack = [self.root]
        while stack:
            folder = stack.pop()
            try:
                with os.scandir(folder) as it:
                    for entry in it:
                        if entry.is_dir(follow_symlinks=False):
                            if self.recursive and self._name(entry.path) is not None:
                                stack.append(entry.path)
                        elif entry.is_file():
                            yield entry
            except OSError as e:
                log.warning("cannot list %s: %s", folder, first_line(e))

    def _see(self, path: str, atomic: bool, now: float, st: os.stat_result | None = None) -> None:
        name = self._name(path)
        if name is None:
            return
        try:
            st = st or os.stat(path)
        except OSError:
            self.tracked.pop(path, None)
            return
        ident = (st.st_size, st.st_mtime_ns)
        if self.known.get(path) == ident:
            return
        c = self.tracked.get(path)
        if c is None or (c.size, c.mtime_ns) != ident:
            fresh = Candidate(path, name, *ident, since=now, atomic=atomic)
            if c is not None:
                fresh.atomic = atomic
            self.tracked[path] = fresh
        elif atomic:
            c.atomic = True

    def poll(self, limit: int) -> list[Candidate]:
        """Take in the events and (when due) rescan; return up to ``limit`` ready files, the
        longest-waiting first. A file is handed out once while its identity stays the same."""
        now = time.monotonic()
        with self._lock:
            dirty, self._dirty = self._dirty, {}
        for path, atomic in dirty.items():
            self._see(path, atomic, now)
        if now >= self._rescan_due:
            self._rescan_due = now + self.rescan_every
            present = set()
            for entry in self._walk():
                present.add(entry.path)
                try:
                    st = entry.stat()
                except OSError:
                    continue
                self._see(entry.path, False, now, st)
            self.known = {p: v for p, v in self.known.items() if p in present}
            for gone in [p for p in self.tracked if p not in present]:
                del self.tracked[gone]
        return self._ready(now, limit)

    def _ready(self, now: float, limit: int) -> list[Candidate]:
        wall = time.time_ns()
        ready: list[Candidate] = []
        for path, c in list(self.tracked.items()):
            if len(ready) >= limit:
                break
            old_enough = (wall - c.mtime_ns) / 1e9 >= self.settle
            if not (c.atomic or old_enough or now - c.since >= self.settle):
                continue
            try:  # the identity once more: a writer may still be at work
                st = os.stat(path)
            except OSError:
                del self.tracked[path]
                continue
            if (st.st_size, st.st_mtime_ns) != (c.size, c.mtime_ns):
                self.tracked[path] = Candidate(path, c.name, st.st_size, st.st_mtime_ns, since=now)
                continue
            del self.tracked[path]
            self.known[path] = (c.size, c.mtime_ns)  # handed out once (see retrack)
            ready.append(c)
        return ready

    def next_due(self) -> float:
        """Seconds until a tracked file may settle or the next rescan, whichever is first."""
        now = time.monotonic()
        due = self._rescan_due - now
        for c in self.tracked.values():
            due = min(due, c.since + self.settle - now)
        return max(0.0, due)

    def mark_known(self, c: Candidate) -> None:
        """A handled file: skipped by later scans while its identity stays the same."""
        self.known[c.path] = (c.size, c.mtime_ns)

    def retrack(self, c: Candidate) -> None:
        """A file that changed while it was read: watch it settle again."""
        self.known.pop(c.path, None)
        self._see(c.path, False, time.monotonic())

    @property
    def waiting(self) -> int:
        """Files seen but not ready yet."""
        return len(self.tracked)
