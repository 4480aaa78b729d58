"""The durable state of ``s2swclip watch``: the ledger (SQLite, WAL) and ``results.jsonl``.

Exactly once, crash-safe. A file ready to be scored gets a ``pending`` row (its identity: the
name relative to ``IN``, size, mtime). A scored batch is made durable in two steps:

1. its result lines are appended to ``results.jsonl``, flushed and fsynced;
2. one SQLite transaction marks its rows ``done`` (with their SHA-256 and result) and records
   the length of ``results.jsonl`` that the ledger accounts for (``jsonl_offset``).

``kill -9`` between the two leaves lines beyond ``jsonl_offset``: on restart
:meth:`Ledger.recover` truncates a torn last line, then marks the ``pending`` rows those
complete lines name ``done`` (their result is durable), so they are not scored again; a line
cut short is removed and its file, still ``pending``, is scored again. Every file therefore
ends with exactly one line. (In WAL mode with ``synchronous=NORMAL`` a killed process loses no
committed transaction; a power cut may lose the last ones, and recovery rebuilds them from
``results.jsonl`` the same way.) The ledger also records the model fingerprint and the threshold:
a restart with another model or threshold is refused (the old results would mix with new).
"""

from __future__ import annotations

import json
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from ...errors import S2SWError, first_line

__all__ = ["LEDGER_NAME", "RESULTS_NAME", "Ledger", "Part", "ResultsLog"]

LEDGER_NAME = "ledger.sqlite3"
RESULTS_NAME = "results.jsonl"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS parts (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,            -- relative to IN, '/'-separated
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    sha256 TEXT,
    state TEXT NOT NULL,           -- pending | done
    result TEXT,                   -- the results.jsonl line (JSON) once done
    action TEXT,                   -- NULL | to_sort | sorted
    present INTEGER NOT NULL DEFAULT 1  -- 0 once --sort moved the file out of IN
);
CREATE INDEX IF NOT EXISTS parts_name ON parts (name, id);
CREATE INDEX IF NOT EXISTS parts_state ON parts (state);
"""


@dataclass(frozen=True)
class Part:
    """One row of the ledger."""

    id: int
    name: str
    size: int
    mtime_ns: int
    sha256: str | None
    state: str
    result: str | None
    action: str | None
    present: bool

    def result_dict(self) -> dict[str, Any]:
        return json.loads(self.result) if self.result else {}


class Ledger:
    """The SQLite ledger in ``OUT`` (see the module docstring). One process at a time.

    Args:
        out: the output folder (exists).
        fingerprint: what fixes the results (``model`` digests, ``threshold``, ...): recorded
            on the first run, compared on every later one.
    """

    def __init__(self, out: str | os.PathLike, fingerprint: dict[str, Any]):
        self.path = Path(out) / LEDGER_NAME
        try:
            self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")  # WAL: a crashed process loses nothing
            self.db.execute("PRAGMA busy_timeout=5000")
            self.db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as e:
            raise S2SWError(f"cannot use the ledger {self.path}: {first_line(e)}; choose another out_dir",
                            fields=["out_dir"]) from None
        self._check_fingerprint(fingerprint)

    def close(self) -> None:
        self.db.close()

    # --------------------------------------------------------------------------- meta
    def _meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def _check_fingerprint(self, fingerprint: dict[str, Any]) -> None:
        stored = self._meta("fingerprint")
        if stored is None:
            with self.db:
                self.db.execute("BEGIN IMMEDIATE")
                self.db.execute("INSERT OR REPLACE INTO meta VALUES ('fingerprint', ?)", (json.dumps(fingerprint),))
            return
        old = json.loads(stored)
        for key in sorted(set(old) | set(fingerprint)):
            if old.get(key) != fingerprint.get(key):
                raise S2SWError(f"{self.path} was written with another {key} ({_short(old.get(key))}, now "
                                f"{_short(fingerprint.get(key))}): its results would mix with new ones; use the "
                                f"same model and threshold, or another out_dir", fields=["out_dir"])

    @property
    def jsonl_offset(self) -> int:
        return int(self._meta("jsonl_offset") or 0)

    # --------------------------------------------------------------------------- parts
    def latest(self, name: str) -> Part | None:
        row = self.db.execute("SELECT * FROM parts WHERE name = ? ORDER BY id DESC LIMIT 1", (name,)).fetchone()
        return None if row is None else Part(*row[:8], bool(row[8]))

    def latest_done(self, name: str) -> Part | None:
        """The last scored part under ``name`` still in ``IN`` (not moved away by ``--sort``)."""
        row = self.db.execute("SELECT * FROM parts WHERE name = ? AND state = 'done' ORDER BY id DESC LIMIT 1",
                              (name,)).fetchone()
        return None if row is None or not row[8] else Part(*row[:8], bool(row[8]))

    def add_pending(self, items: Sequence[tuple[str, int, int]]) -> list[int]:
        """``(name, size, mtime_ns)`` of files about to be scored -> their row ids (a file
        already ``pending`` keeps its row, with the identity updated). One transaction."""
        ids = []
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            for name, size, mtime in items:
                row = self.db.execute("SELECT id FROM parts WHERE name = ? AND state = 'pending' ORDER BY id DESC "
                                      "LIMIT 1", (name,)).fetchone()
                if row is not None:
                    self.db.execute("UPDATE parts SET size = ?, mtime_ns = ? WHERE id = ?", (size, mtime, row[0]))
                    ids.append(row[0])
                else:
                    cur = self.db.execute("INSERT INTO parts (name, size, mtime_ns, state) VALUES (?, ?, ?, 'pending')",
                                          (name, size, mtime))
                    ids.append(cur.lastrowid)
        return ids

    def commit(self, done: Iterable[tuple[int, str, str, str | None]], offset: int,
               unchanged: Iterable[tuple[int, int, int, int]] = ()) -> None:
        """One transaction: rows ``(id, sha256, result_json, action)`` become ``done``, the
        ledger accounts for ``results.jsonl`` up to ``offset``; ``unchanged`` rows
        ``(pending_id, done_id, size, mtime_ns)``: a file whose content was already scored
        (only its mtime changed) drops its pending row and updates the done row's identity."""
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.executemany("UPDATE parts SET state = 'done', sha256 = ?, result = ?, action = ? WHERE id = ?",
                                [(sha, res, action, pid) for pid, sha, res, action in done])
            for pending_id, done_id, size, mtime in unchanged:
                self.db.execute("DELETE FROM parts WHERE id = ? AND state = 'pending'", (pending_id,))
                self.db.execute("UPDATE parts SET size = ?, mtime_ns = ? WHERE id = ?", (size, mtime, done_id))
            self.db.execute("INSERT OR REPLACE INTO meta VALUES ('jsonl_offset', ?)", (str(int(offset)),))

    def drop_pending(self, pid: int) -> None:
        """A pending file that vanished before it was scored."""
        with self.db:
            self.db.execute("DELETE FROM parts WHERE id = ? AND state = 'pending'", (pid,))

    def set_action(self, ids: Sequence[int], action: str, present: bool) -> None:
        with self.db:
            self.db.executemany("UPDATE parts SET action = ?, present = ? WHERE id = ?",
                                [(action, int(present), i) for i in ids])

    def rows(self, where: str, params: tuple = ()) -> list[Part]:
        return [Part(*r[:8], bool(r[8])) for r in self.db.execute(f"SELECT * FROM parts WHERE {where} ORDER BY id",
                                                                   params)]

    def counts(self) -> dict[str, int]:
        return dict(self.db.execute("SELECT state, COUNT(*) FROM parts GROUP BY state").fetchall())

    # ------------------------------------------------------------------------ recovery
    def recover(self, log: ResultsLog, action: str | None = None) -> int:
        """After a crash: lines of ``results.jsonl`` beyond the ledger's offset are durable
        results whose transaction was lost: mark their pending rows done (with ``action``, the
        one a commit would have given them). Returns how many."""
        offset = self.jsonl_offset
        size = log.size()
        if size < offset:
            raise S2SWError(f"{log.path} is shorter ({size} bytes) than {self.path} records ({offset} bytes): "
                            f"it was edited or replaced; restore it or use another out_dir", fields=["out_dir"])
        done = []
        for line in log.lines_from(offset):
            try:
                row = json.loads(line)
                name, sha = row["name"], row.get("sha256")
            except (ValueError, KeyError, TypeError):
                continue
            hit = self.db.execute("SELECT id FROM parts WHERE name = ? AND state = 'pending' ORDER BY id DESC LIMIT 1",
                                  (name,)).fetchone()
            if hit is None:  # its pending row was lost too (a power cut): identity unknown, content known
                hit = self.add_pending([(name, -1, -1)])
            done.append((hit[0], sha, line, action))
        self.commit(done, size)
        return len(done)


class ResultsLog:
    """``OUT/results.jsonl``, appended one batch at a time: write, flush, fsync. A torn last
    line (a crash in the middle of a write) is cut off on open."""

    def __init__(self, out: str | os.PathLike):
        self.path = Path(out) / RESULTS_NAME
        self.f = open(self.path, "a+b")
        self._cut_torn_line()

    def _cut_torn_line(self) -> None:
        size = self.size()
        if not size:
            return
        block = 1 << 16
        pos = size
        while pos > 0:  # the last newline, read backwards in blocks
            start = max(0, pos - block)
            self.f.seek(start)
            chunk = self.f.read(pos - start)
            k = chunk.rfind(b"\n")
            if k >= 0:
                end = start + k + 1
                break
            pos = start
        else:
            end = 0
        if end != size:
            self.f.truncate(end)
            self.f.flush()
            os.fsync(self.f.fileno())

    def size(self) -> int:
        return os.fstat(self.f.fileno()).st_size

    def lines_from(self, offset: int) -> Iterable[str]:
        self.f.seek(offset)
        for raw in self.f:
            yield raw.decode("utf-8", errors="replace").rstrip("\n")

    def append(self, lines: Sequence[str]) -> int:
        """Append complete lines durably; returns the file's new length."""
        if lines:
            self.f.seek(0, os.SEEK_END)
            self.f.write("".join(line + "\n" for line in lines).encode("utf-8"))
            self.f.flush()
            os.fsync(self.f.fileno())
        return self.size()

    def close(self) -> None:
        self.f.close()


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True) if not isinstance(value, str) else value
    return text if len(text) <= 100 else text[:97] + "..."
