"""Keep the profiles a process serves in step with the profiles root on disk.

Another process (``s2swclip profile create|add|calibrate|delete``, a second service) may change
the root while a service runs. :class:`DiskSync` notices it at request time with a cheap check:
one ``stat`` of a profile's ``current.json`` (a change replaces it by a rename, so its inode,
mtime or size differ) before a request uses that profile, and a listing of the root (one
``scandir``) plus one ``stat`` per profile when all are listed. Only a changed pointer is
loaded again, off the event loop, in full (:meth:`ProfileStore.load
<s2swclip.profiles.store.ProfileStore.load>`: manifest, bank and image digests verified), and
the new :class:`~s2swclip.profiles.runtime.Profile` replaces the old one in one reference swap
(:class:`~s2swclip.profiles.runtime.LiveProfiles`): a request scores with the old or the new
bank, whole. A profile whose pointer is gone is dropped. A new version that does not load is
reported by name (``problems``, ``GET /v1/profiles`` ``unusable``, a warning in the log) and
the old version keeps serving; it is not retried until its pointer changes again.

The pointer is ``stat``-ed before it is read, so a change made between the two is seen again at
the next check (at worst one extra load, never a missed version).
"""

from __future__ import annotations

import logging
import os
import threading

from ..errors import S2SWError
from .manifest import InvalidName, check_name
from .runtime import LiveProfiles, Profile

__all__ = ["DiskSync"]

log = logging.getLogger(__name__)

POINTER = "current.json"  # the store's pointer file (:mod:`.store`)


class DiskSync:
    """Loads what changed under ``store.root`` into ``live``; ``problems`` maps the name of a
    profile whose current version does not load to the reason.

    Args:
        store: the :class:`~s2swclip.profiles.store.ProfileStore` (its detector scores).
        live: the served profiles.
        problems: ``{name: problem}``, shared with the caller (reported by the service).
    """

    def __init__(self, store, live: LiveProfiles, problems: dict[str, str]):
        self.store, self.live, self.problems = store, live, problems
        self._seen: dict[str, tuple] = {}  # name -> the pointer's stat when it was last loaded
        self._lock = threading.Lock()  # one load at a time; checks that find nothing new take no lock
        self.loads = 0  # loads made (a test reads it)

    def _pointer_key(self, name: str) -> tuple | None:
        try:
            st = os.stat(self.store.root / name / POINTER)
        except OSError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size

    def refresh(self, name: str | None = None) -> None:
        """Check profile ``name`` (None: every profile, and the root's listing for new ones);
        load what changed. An invalid ``name`` is left alone (the caller answers 404/400)."""
        self.update(self.stale(name))

    def stale(self, name: str | None = None) -> list[str]:
        """The profiles whose pointer changed since they were loaded (``name``: that one only;
        None: all, listing the root): ``stat`` calls only, no file is read."""
        if name is not None:
            try:
                names = {check_name(name)}
            except InvalidName:
                return []
        else:
            names = set(self.store.names()) | set(self._seen) | {p.name for p in self.live.all()} | set(self.problems)
        out = []
        for n in sorted(names):
            key = self._pointer_key(n)
            if key != self._seen.get(n) or (key is None and (self.live.get(n) or n in self.problems)):
                out.append(n)
        return out

    def update(self, names: list[str]) -> None:
        """Load ``names`` again (what :meth:`stale` returned), one load at a time."""
        for n in names:
            with self._lock:
                self._update(n)

    def _update(self, name: str) -> None:
        """Load ``name`` again (lock held) if its pointer still differs from the one loaded."""
        key = self._pointer_key(name)
        if key is None:
            if self.live.get(name) is not None or name in self.problems:
                log.info("profile %s: removed on disk, no longer served", name)
            self.live.remove(name)
            self.problems.pop(name, None)
            self._seen.pop(name, None)
            return
        if self._seen.get(name) == key:
            return  # another request loaded it meanwhile
        self.loads += 1
        try:
            profile = self.store.load(name)
        except S2SWError as e:
            self.problems[name] = str(e)
            old = self.live.get(name)
            log.warning("profile %s: its current version on disk does not load (%s); %s", name, e,
                        "skipped" if old is None else f"still serving version {old.version}")
        else:
            self.live.put(profile)
            self.problems.pop(name, None)
            log.info("profile %s: version %d loaded from disk", name, profile.version)
        self._seen[name] = key

    def mark(self, profile: Profile) -> None:
        """``profile`` was just written by this process and is served: remember its pointer, so
        it is not loaded again (only when the pointer still names this version)."""
        key = self._pointer_key(profile.name)
        try:
            version = self.store.current_version(profile.name)
        except S2SWError:
            return
        if key is not None and version == profile.version:
            self._seen[profile.name] = key

    def forget(self, name: str) -> None:
        """``name`` was deleted by this process."""
        self._seen.pop(name, None)
