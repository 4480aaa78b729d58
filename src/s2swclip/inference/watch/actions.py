"""Acting on verdicts once they are durable: sorting files into ``OUT/ok|anomalous|error/``
and running the ``--on-anomaly`` command."""

from __future__ import annotations

import logging
import os
import queue
import shlex
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any

from ...errors import first_line

__all__ = ["HookRunner", "SORT_FOLDERS", "move_or_copy", "verdict_folder"]

log = logging.getLogger(__name__)

SORT_FOLDERS = ("ok", "anomalous", "error")


def verdict_folder(result: dict[str, Any]) -> str:
    """``error`` (not scored), ``anomalous`` or ``ok``."""
    if result.get("error") is not None:
        return "error"
    return "anomalous" if result.get("anomalous") else "ok"


def move_or_copy(src: str, dest_root: Path, name: str, sha256: str | None, copy: bool) -> Path | None:
    """Move (or copy) ``src`` to ``dest_root/name``; an existing file there is never replaced:
    the new one gets ``_<hash>`` (then ``_<n>``) before its extension. Returns where it went,
    None when it could not be moved (logged)."""
    dest = dest_root / name
    stem, ext = os.path.splitext(dest.name)
    k = 1
    while dest.exists():
        tag = (sha256 or "")[:8] or "copy"
        dest = dest.with_name(f"{stem}_{tag}{ext}" if k == 1 else f"{stem}_{tag}_{k}{ext}")
        k += 1
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        if copy:
            shutil.copy2(src, dest)
        else:
            try:
                os.rename(src, dest)  # same file system: atomic
            except OSError:
                shutil.move(src, dest)
    except OSError as e:
        log.warning("could not %s %s to %s: %s", "copy" if copy else "move", src, dest.parent, first_line(e))
        return None
    return dest


class HookRunner:
    """Runs ``CMD`` (split like a shell command line, no shell) once per anomalous result, with
    the result's JSON on its stdin, on one background thread: scoring never waits for it. Each
    run is limited to ``timeout`` seconds; failures (exit status, time-out, a missing program)
    are logged. At most ``max_queue`` runs wait; more are dropped with a warning."""

    def __init__(self, command: str, timeout: float = 30.0, max_queue: int = 1000):
        self.argv = shlex.split(command)
        if not self.argv:
            raise ValueError("empty on_anomaly command")
        self.timeout = float(timeout)
        self.queue: queue.Queue[str | None] = queue.Queue(max_queue)
        self.failed = self.ran = 0
        self.thread = threading.Thread(target=self._loop, name="s2sw-on-anomaly", daemon=True)
        self.thread.start()

    def offer(self, result_json: str) -> None:
        try:
            self.queue.put_nowait(result_json)
        except queue.Full:
            self.failed += 1
            log.warning("on_anomaly command: %d runs already waiting; not run for %s", self.queue.maxsize,
                        result_json[:200])

    def _loop(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                return
            self._run_one(item)

    def _run_one(self, payload: str) -> None:
        with tempfile.TemporaryFile() as err:  # what the command says on stderr, on disk (any size)
            try:
                proc = subprocess.run(self.argv, input=payload.encode("utf-8"), stdout=subprocess.DEVNULL,
                                      stderr=err, timeout=self.timeout, check=False)
            except subprocess.TimeoutExpired:
                self.failed += 1
                log.warning("on_anomaly command %s ran longer than %g s and was stopped", self.argv[0], self.timeout)
                return
            except OSError as e:
                self.failed += 1
                log.warning("on_anomaly command %s could not run: %s", self.argv[0], first_line(e))
                return
            self.ran += 1
            if proc.returncode != 0:
                self.failed += 1
                err.seek(max(0, err.seek(0, os.SEEK_END) - 400))
                tail = err.read().decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
                log.warning("on_anomaly command %s exited with status %d: %s", self.argv[0], proc.returncode,
                            tail[0][:200])

    def close(self) -> None:
        """Let the waiting runs finish (each within its time limit) and stop the thread."""
        self.queue.put(None)
        self.thread.join()
