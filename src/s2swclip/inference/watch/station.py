"""``s2swclip watch``: score every complete file dropped into a folder exactly once.

The loop: :class:`~.detect.FileDetector` hands out files that are complete; each is looked up
in the :class:`~.ledger.Ledger` (already scored with this identity or content: skipped), gets a
``pending`` row, and runs through the shared :class:`~s2swclip.inference.pipeline.InferencePipeline`
(decoding on its workers, batches on the model, overlays drawn and written on its workers while
the model scores the next batch). A batch's results become durable together (``results.jsonl``
fsynced, then one ledger transaction, see :mod:`.ledger`); only then are the files sorted and
the ``--on-anomaly`` command started. Memory is bounded: at most ``max_queue`` files are taken
at a time, and the pipeline holds at most its look-ahead of decoded images.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ...fileio import atomic_write_bytes
from ...viz.heatmap import standalone_scale
from ..local import overlay_names
from ..pipeline import InferencePipeline, ScoredImage, overlay_png
from .actions import HookRunner, move_or_copy, verdict_folder
from .detect import Candidate, FileDetector
from .ledger import Ledger, ResultsLog

__all__ = ["WatchOptions", "WatchStation", "WatchStats"]

log = logging.getLogger(__name__)

#: in a burst (at least BURST_BACKLOG batches of files still to score), results are made durable
#: at most this often (seconds): the groups scored meanwhile share one fsync and one transaction,
#: so the fsyncs do not hold up the model. Otherwise each group is committed once scored (and a
#: chunk of files always at its end), so files arriving at a steady rate wait for no other.
COMMIT_INTERVAL_S = 0.1
BURST_BACKLOG = 4


@dataclass
class WatchOptions:
    """What ``s2swclip watch`` does besides scoring (see the command's help)."""

    recursive: bool = False
    settle_ms: float = 500.0
    rescan_s: float = 5.0
    sort: bool = False
    sort_copy: bool = False
    on_anomaly: str | None = None
    on_anomaly_timeout: float = 30.0
    exit_when_idle: float | None = None
    overlays: bool = True
    heatmap_scale: str = "fixed"
    max_queue: int = 256
    status_every: float = 10.0


@dataclass
class WatchStats:
    seen: int = 0
    scored: int = 0
    failed: int = 0
    skipped: int = 0  # already scored (same identity or content)
    started: float = 0.0

    def line(self, waiting: int) -> str:
        rate = self.scored / max(time.monotonic() - self.started, 1e-9)
        return (f"seen {self.seen}, scored {self.scored}, failed {self.failed}, skipped {self.skipped}, "
                f"queue {waiting}, {rate:.1f} img/s")


class WatchStation:
    """Watches ``in_dir``, writes to ``out_dir`` (both checked by the caller).

    Args:
        pipeline: the inference pipeline (its threshold decides ``anomalous``).
        fingerprint: what fixes the results (model digests, threshold), kept in the ledger.
        status_stream: a terminal to keep a status line on (None: log lines every
            ``status_every`` seconds).
    """

    def __init__(self, pipeline: InferencePipeline, in_dir: str | os.PathLike, out_dir: str | os.PathLike,
                 fingerprint: dict[str, Any], options: WatchOptions | None = None, status_stream=None):
        self.pipe, self.opt = pipeline, options or WatchOptions()
        self.in_dir, self.out = Path(os.path.abspath(in_dir)), Path(os.path.abspath(out_dir))
        self.out.mkdir(parents=True, exist_ok=True)
        self.ledger = Ledger(self.out, fingerprint)
        self.results = ResultsLog(self.out)
        self.stats = WatchStats(started=time.monotonic())
        self.status_stream = status_stream
        self._stop = threading.Event()
        self._last_status = 0.0
        self._groups: deque[tuple[list[tuple[Any, ...]], list]] = deque()
        self._last_commit = 0.0
        self._unchanged: list[tuple[int, int, int, int]] = []
        self.hooks = HookRunner(self.opt.on_anomaly, self.opt.on_anomaly_timeout) if self.opt.on_anomaly else None
        self.detector = FileDetector(self.in_dir, recursive=self.opt.recursive, settle=self.opt.settle_ms / 1000,
                                     rescan=self.opt.rescan_s, exclude=self.out)

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def request_stop(self) -> None:
        """Finish the batch in flight, then return from :meth:`run` (signal-safe)."""
        self._stop.set()
        self.detector._wake.set()

    # ----------------------------------------------------------------------------- loop
    def run(self) -> WatchStats:
        """Watch until :meth:`request_stop` or ``exit_when_idle`` seconds with nothing to do."""
        recovered = self.ledger.recover(self.results, "to_sort" if self.opt.sort else None)
        if recovered:
            log.info("recovered %d results written before an interruption", recovered)
        self._finish_actions()
        self.detector.start()
        idle_since = time.monotonic()
        try:
            while not self._stop.is_set():
                ready = self.detector.poll(self.opt.max_queue)
                now = time.monotonic()
                if ready:
                    self._process(ready)
                    idle_since = time.monotonic()
                elif self.detector.waiting:
                    idle_since = now
                self._tick()
                if ready:
                    continue
                if self.opt.exit_when_idle is not None and now - idle_since >= self.opt.exit_when_idle:
                    break
                wait = min(self.detector.next_due(), 0.5)
                if self.opt.exit_when_idle is not None:
                    wait = min(wait, max(0.01, self.opt.exit_when_idle - (now - idle_since)))
                self.detector.wait(max(0.01, wait))
        finally:
            self._shutdown()
        return self.stats

    def _shutdown(self) -> None:
        try:
            self._commit(block=True)
        finally:
            self.detector.stop()
            self.pipe.close()
            if self.hooks is not None:
                self.hooks.close()
            self._status(final=True)
            self.results.close()
            self.ledger.close()

    def _tick(self) -> None:
        """The status line when due (every 0.5 s on a terminal, ``status_every`` s in a log)."""
        now = time.monotonic()
        if now - self._last_status >= (0.5 if self.status_stream else self.opt.status_every):
            self._last_status = now
            self._status()

    def _status(self, final: bool = False) -> None:
        line = self.stats.line(self.detector.waiting)
        if self.status_stream is not None:
            self.status_stream.write("\r" + line + "\x1b[K" + ("\n" if final else ""))
            self.status_stream.flush()
        else:
            log.info("watch: %s", line)

    # -------------------------------------------------------------------------- a chunk
    def _process(self, ready: list[Candidate]) -> None:
        todo: list[tuple[Candidate, Any]] = []
        for c in ready:
            prev = self.ledger.latest_done(c.name)  # a pending row left by a crash is reused below
            if prev is not None and (prev.size, prev.mtime_ns) == (c.size, c.mtime_ns):
                self.detector.mark_known(c)
                self.stats.skipped += 1
                continue
            todo.append((c, prev))
        if not todo:
            return
        self.stats.seen += len(todo)
        ids = self.ledger.add_pending([(c.name, c.size, c.mtime_ns) for c, _ in todo])
        group: list[tuple[Any, ...]] = []
        futures: list = []
        for rec in self.pipe.run([(c.path, c.name) for c, _ in todo], digest=True):
            c, prev = todo[rec.index]
            entry = self._admit(rec, c, prev, ids[rec.index])
            if entry is not None:
                futures.extend(self._overlay(rec, entry))
                group.append(entry)
            rec.release()
            if len(group) >= self.pipe.batch_size:
                self._groups.append((group, futures))
                group, futures = [], []
                backlog = len(todo) - 1 - rec.index  # files of this chunk still to come
                if backlog < BURST_BACKLOG * self.pipe.batch_size or \
                        time.monotonic() - self._last_commit >= COMMIT_INTERVAL_S:
                    self._commit(block=False)
                if self._stop.is_set():
                    break  # the batch in flight is done; the rest stays pending for the next start
        self._groups.append((group, futures))
        self._commit(block=True)

    def _admit(self, rec: ScoredImage, c: Candidate, prev, pid: int) -> tuple[Any, ...] | None:
        """The record of a file, unless it changed while read (watched again), vanished before
        it was read, or holds content already scored under this name (only its mtime changed)."""
        try:
            st = os.stat(c.path)
            same = (st.st_size, st.st_mtime_ns) == (c.size, c.mtime_ns)
        except OSError:
            st, same = None, rec.sha256 is not None
        if st is None and rec.sha256 is None:
            log.info("%s vanished before it was scored", c.name)
            self.ledger.drop_pending(pid)
            return None
        if not same:
            self.detector.retrack(c)  # still being written: its pending row waits for the next read
            return None
        if prev is not None and rec.sha256 is not None and prev.sha256 == rec.sha256:
            self._unchanged.append((pid, prev.id, c.size, c.mtime_ns))
            self.detector.mark_known(c)
            self.stats.skipped += 1
            return None
        row = {"path": c.path, "name": c.name, "sha256": rec.sha256, "score": rec.score, "anomalous": rec.anomalous,
               "map_max": rec.map_max, "map_mean": rec.map_mean, "map_frac_above": rec.map_frac_above,
               "overlay": None, "error": rec.error, "error_code": rec.error_code,
               "scored_at": datetime.now(timezone.utc).isoformat(timespec="milliseconds")}
        return (pid, c, row)

    def _overlay(self, rec: ScoredImage, entry: tuple[Any, ...]) -> list:
        _, c, row = entry
        if not self.opt.overlays or rec.error is not None or rec.preview is None:
            return []
        rel = Path(overlay_names([c.name])[0])
        rel = rel.with_name(f"{rel.stem}.{(rec.sha256 or 'x')[:12]}.png")
        row["overlay"] = rel.as_posix()
        scale = standalone_scale(self.opt.heatmap_scale, rec.anomaly_map, self.pipe.threshold, self.pipe.map_scale)
        preview, amap, target = rec.preview, rec.anomaly_map, self.out / rel
        return [self.pipe.submit(lambda: atomic_write_bytes(target, overlay_png(preview, amap, scale=scale,
                                                                                 colorbar=True)))]

    # ------------------------------------------------------------------------ durability
    def _commit(self, block: bool) -> None:
        """Make the finished groups durable, in order (a group waits for its overlays): every
        group ready now in one append to ``results.jsonl`` (one fsync) and one transaction."""
        ready: list[tuple[Any, ...]] = []
        while self._groups:
            group, futures = self._groups[0]
            if not block and not all(f.done() for f in futures):
                break
            for f in futures:
                f.result()  # an overlay that could not be written stops the run (a full disk)
            self._groups.popleft()
            ready.extend(group)
        self._last_commit = time.monotonic()
        if not ready and not self._unchanged:
            return
        lines = [json.dumps(row, allow_nan=False) for _, _, row in ready]
        offset = self.results.append(lines)
        action = "to_sort" if self.opt.sort else None
        self.ledger.commit([(pid, row["sha256"], line, action) for (pid, _, row), line in zip(ready, lines)],
                           offset, self._unchanged)
        self._unchanged = []
        for (pid, c, row), line in zip(ready, lines):
            self.detector.mark_known(c)
            if row["error"] is not None:
                self.stats.failed += 1
                log.warning("%s: %s", c.name, row["error"])
            else:
                self.stats.scored += 1
            if self.hooks is not None and row["anomalous"]:
                self.hooks.offer(line)
        if self.opt.sort and ready:
            self._sort([(pid, c.path, c.name, row) for pid, c, row in ready])
        self._tick()

    def _sort(self, items: list[tuple[int, str, str, dict[str, Any]]]) -> None:
        moved = []
        for pid, path, name, row in items:
            if move_or_copy(path, self.out / verdict_folder(row), name, row["sha256"], self.opt.sort_copy) is not None:
                moved.append(pid)
        if moved:
            self.ledger.set_action(moved, "sorted", present=self.opt.sort_copy)

    def _finish_actions(self) -> None:
        """Files whose result is durable but that an interruption kept from being sorted."""
        if not self.opt.sort:
            return
        items = []
        for part in self.ledger.rows("state = 'done' AND action = 'to_sort'"):
            path = str(self.in_dir / part.name)
            try:
                st = os.stat(path)
            except OSError:
                continue
            if (st.st_size, st.st_mtime_ns) == (part.size, part.mtime_ns):
                items.append((part.id, path, part.name, part.result_dict()))
        if items:
            log.info("sorting %d files scored before an interruption", len(items))
            self._sort(items)

