"""Reading a Ray run's record (``DIR/results/_run.json``) back, as the untrusted file it is.

A resumed run takes its threshold and calibration from the record, so a record that was edited,
truncated or written by something else must be one clear error, not a traceback or a NaN
threshold applied to new rows. :func:`load_run_record` reads it (bounded, never blocking on a
FIFO, ``NaN``/``Infinity`` refused) and checks every field the engine uses.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from ..errors import S2SWError, first_line
from ..fileio import read_regular_file

__all__ = ["MAX_RECORD_BYTES", "check_run_record", "load_run_record"]

MAX_RECORD_BYTES = 16 << 20
_CALIBRATION_INTS = ("n", "rank", "flagged")
_CALIBRATION_FLOATS = ("threshold", "fpr", "bound")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def check_run_record(rec: Any) -> dict[str, Any]:
    """The problem with a parsed run record, as ValueError naming the field; returns ``rec``."""
    if not isinstance(rec, dict):
        raise ValueError("it is not a JSON object")
    if not isinstance(rec.get("settings"), dict):
        raise ValueError("'settings' is missing or not an object")
    if rec.get("threshold") is not None and not _number(rec["threshold"]):
        raise ValueError(f"'threshold' must be null or a finite number, got {str(rec['threshold'])[:40]!r}")
    cal = rec.get("calibration")
    if cal is None:
        return rec
    if not isinstance(cal, dict) or set(cal) != {*_CALIBRATION_INTS, *_CALIBRATION_FLOATS}:
        raise ValueError(f"'calibration' must be null or an object with {', '.join(_CALIBRATION_FLOATS)}, "
                         f"{', '.join(_CALIBRATION_INTS)} (incomplete?)")
    bad = [k for k in _CALIBRATION_FLOATS if not _number(cal[k])] + [k for k in _CALIBRATION_INTS if not _count(cal[k])]
    if bad:
        raise ValueError(f"calibration.{bad[0]} has the wrong type or is not finite: {str(cal[bad[0]])[:40]!r}")
    if not (0 < cal["fpr"] < 1 and 0 <= cal["bound"] <= 1 and 1 <= cal["rank"] <= cal["n"]
            and cal["flagged"] <= cal["n"]):
        raise ValueError("calibration numbers are out of range (fpr, bound in [0, 1]; 1 <= rank <= n; flagged <= n)")
    return rec


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def load_run_record(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check a run record; :class:`S2SWError` naming the file and the field."""
    path = Path(path)
    fix = f"delete the folder {path.parent} to start over, or choose another out_dir"
    try:
        raw = read_regular_file(path, MAX_RECORD_BYTES)
        if len(raw) > MAX_RECORD_BYTES:
            raise ValueError(f"it is larger than {MAX_RECORD_BYTES} bytes")
        return check_run_record(json.loads(raw, parse_constant=_reject_constant))
    except (OSError, ValueError, RecursionError) as exc:
        raise S2SWError(f"cannot use {path}: {first_line(exc)}; {fix}", fields=["out_dir"]) from None
