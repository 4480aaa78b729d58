"""Results as Parquet shards: the output folder of the Ray engine (driver side, pyarrow only).

Layout::

    DIR/results/part-<run>-<seq>.parquet   rows (:data:`~.local.RESULT_FIELDS`, :func:`result_schema`)
    DIR/results/_run.json                  the settings the rows depend on, threshold, calibration
    DIR/results/.lock                      held while a run writes (one writer per folder)
    DIR/overlays/*.png                     heat-map overlays (optional)

A shard is written whole to a hidden temporary file and renamed
(:func:`~s2swclip.fileio.atomic_write_bytes`): a row is committed exactly when its shard is, and a
shard interrupted while written is a hidden ``.tmp`` file, removed by the next run. The overlays
of a shard's rows are written before it.
``pyarrow.parquet.read_table("DIR/results")`` (or pandas, Spark, DuckDB) reads the rows: names
starting with ``_`` or ``.`` are skipped by such readers.
"""

from __future__ import annotations

import io
import json
import os
import re
import secrets
import time
from pathlib import Path
from typing import Any, Sequence

from ..errors import S2SWError, first_line
from ..fileio import atomic_write_bytes, atomic_write_text, remove_temporaries
from .calibration import Calibration
from .local import RESULT_FIELDS
from .run_record import load_run_record

__all__ = ["OVERLAY_PNG", "RESULTS", "ResultsFolder", "committed_paths", "count_rows", "read_results",
           "require_pyarrow", "result_schema", "rows_in_flight_schema"]

RESULTS = "results"
RUN_RECORD = "_run.json"
#: The column of rows in flight that holds the overlay PNG (written to a file, not to the shard).
OVERLAY_PNG = "overlay_png"
_FORMAT = 1
_SHARD_GLOB = "part-*.parquet"
_OWN_FILES = re.compile(r"part-.+\.parquet|_run\.json")
_OVERLAY_FILES = re.compile(r".+\.png")


def require_pyarrow():
    """``(pyarrow, pyarrow.parquet)``, or :class:`S2SWError` saying how to install them."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise S2SWError("the Ray engine needs Ray Data and pyarrow: pip install 's2swclip[ray]'") from None
    return pa, pq


def result_schema():
    """The Parquet schema of a results shard: :data:`~.local.RESULT_FIELDS`, typed."""
    pa, _ = require_pyarrow()
    types = {"path": pa.string(), "name": pa.string(), "score": pa.float64(), "anomalous": pa.bool_(),
             "map_max": pa.float64(), "map_mean": pa.float64(), "map_frac_above": pa.float64(),
             "overlay": pa.string(), "error": pa.string(), "error_code": pa.string()}
    return pa.schema([(f, types[f]) for f in RESULT_FIELDS])


def rows_in_flight_schema():
    """Rows as the scoring workers send them: the result schema and :data:`OVERLAY_PNG`."""
    pa, _ = require_pyarrow()
    return result_schema().append(pa.field(OVERLAY_PNG, pa.binary()))


# --------------------------------------------------------------------------------- reading rows
def _shards(results: Path) -> list[Path]:
    return sorted(results.glob(_SHARD_GLOB))


def _read_shard(path: Path, columns: Sequence[str] | None = None):
    pa, pq = require_pyarrow()
    try:
        return pq.read_table(path, columns=columns, schema=result_schema())
    except (OSError, pa.ArrowException) as exc:
        raise S2SWError(f"results shard {path} cannot be read ({first_line(exc)}); delete it "
                        f"to score its images again") from None


def read_results(out_dir: str | os.PathLike):
    """Every committed row under ``out_dir/results``, as a pyarrow Table sorted by path (the
    inputs' order). Raises :class:`S2SWError` when there is none."""
    pa, _ = require_pyarrow()
    results = Path(out_dir) / RESULTS
    shards = _shards(results) if results.is_dir() else []
    if not shards:
        raise S2SWError(f"no results under {results}: score the inputs into out_dir {out_dir} with the Ray "
                        f"engine first", fields=["out_dir"])
    table = pa.concat_tables([_read_shard(s) for s in shards])
    return table.sort_by("path")


def committed_paths(out_dir: str | os.PathLike) -> set[str]:
    """Paths that have a committed row under ``out_dir/results``."""
    results = Path(out_dir) / RESULTS
    done: set[str] = set()
    for s in _shards(results) if results.is_dir() else []:
        done.update(_read_shard(s, ["path"]).column("path").to_pylist())
    return done


# ------------------------------------------------------------------------------- the output folder
class ResultsFolder:
    """The results folder of one run: lock, run record, shard commits (driver side only).

    Args:
        out: the output folder (``DIR``).
        settings: what the rows depend on (JSON-safe); a folder holding rows of other
            settings is refused.
    """

    def __init__(self, out: Path, settings: dict[str, Any]):
        self.out = out
        self.results = out / RESULTS
        self.settings = json.loads(json.dumps(settings))
        self.run_id = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)
        self.seq = 0
        self._lock = None

    def __enter__(self) -> ResultsFolder:
        import fcntl

        self.results.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.results / ".lock", "a+")
        try:
            fcntl.flock(self._lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock.close()
            raise S2SWError(f"another run is writing to {self.out}; wait for it to finish, or choose "
                            f"another out_dir", fields=["out_dir"]) from None
        # what a crashed run did not finish writing: shards, the run record, overlays
        remove_temporaries(self.results, _OWN_FILES)
        if (self.out / "overlays").is_dir():
            remove_temporaries(self.out / "overlays", _OVERLAY_FILES)
        return self

    def __exit__(self, *exc) -> None:
        self._lock.close()

    def record(self) -> dict[str, Any] | None:
        """The run record, after checking that it was written for the same settings."""
        path = self.results / RUN_RECORD
        if not path.exists():
            if _shards(self.results):
                raise S2SWError(f"{self.results} holds result shards but no {RUN_RECORD}: it was not "
                                f"written by this program; choose another out_dir", fields=["out_dir"])
            return None
        rec = load_run_record(path)  # checked: types, finite threshold, a complete calibration
        old = rec["settings"]
        if rec.get("format") != _FORMAT:
            raise S2SWError(f"{path} was written by another version (format {rec.get('format')!r}); "
                            f"choose another out_dir", fields=["out_dir"])
        changed = _first_difference(old, self.settings)
        if changed is not None:
            key, was, now = changed
            if key.startswith("digests."):
                raise S2SWError(f"{self.out} holds results of a different run: {key[8:]} changed since (content "
                                f"sha256 {str(was)[:12]} there, {str(now)[:12]} now); rerun with the same "
                                f"files to resume it, or choose another out_dir", fields=["out_dir"])
            raise S2SWError(f"{self.out} holds results of a different run ({key}: {was!r} there, {now!r} now); "
                            f"rerun with the same settings to resume it, or choose another out_dir",
                            fields=["out_dir"])
        return rec

    def write_record(self, threshold: float | None, calibration: Calibration | None) -> None:
        rec = {"format": _FORMAT, "settings": self.settings, "threshold": threshold,
               "calibration": None if calibration is None else vars(calibration)}
        atomic_write_text(self.results / RUN_RECORD, json.dumps(rec, indent=2, allow_nan=False))

    def commit(self, tables: list) -> int:
        """Write the overlays of these rows (tables of :func:`rows_in_flight_schema`), then the
        rows as one shard (atomically). Returns the rows committed."""
        pa, pq = require_pyarrow()
        table = pa.concat_tables(tables)
        if not table.num_rows:
            return 0
        pngs = table.column(OVERLAY_PNG).to_pylist()
        for overlay, png in zip(table.column("overlay").to_pylist(), pngs):
            if png is not None:
                atomic_write_bytes(self.out / overlay, png)
        buf = io.BytesIO()
        pq.write_table(table.select(list(RESULT_FIELDS)).cast(result_schema()), buf)
        self.seq += 1
        atomic_write_bytes(self.results / f"part-{self.run_id}-{self.seq:05d}.parquet", buf.getvalue())
        return table.num_rows


def _first_difference(old: dict, new: dict, prefix: str = "") -> tuple[str, Any, Any] | None:
    """The first key (``digests.prompts``: nested keys joined by dots) whose value differs."""
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict) and key == "digests":
            inner = _first_difference(a, b, f"{prefix}{key}.")
            if inner is not None:
                return inner
        elif a != b:
            return f"{prefix}{key}", a, b
    return None


def count_rows(out_dir: str | os.PathLike) -> tuple[int, int]:
    """``(scored, failed)`` rows committed under ``out_dir/results``."""
    scored = failed = 0
    for s in _shards(Path(out_dir) / RESULTS):
        errors = _read_shard(s, ["error"]).column("error")
        failed += len(errors) - errors.null_count
        scored += errors.null_count
    return scored, failed
