"""Progress reporting that suits where the output goes.

On a terminal, a tqdm bar. Anywhere else (CI, ``nohup``, a service log) a carriage-return bar
would fill the log with one long line, so a plain line is logged instead every ``every``
fraction of the work (10 % by default) or every ``interval`` seconds, whichever comes first.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

__all__ = ["progress"]

_log = logging.getLogger("s2swclip")


def progress(total: int | None, desc: str, *, enabled: bool = True, unit: str = "img", stream=None,
             every: float = 0.1, interval: float = 30.0):
    """A progress reporter with ``update(n)``, ``set_postfix(dict)`` and ``close()``.

    Args:
        total: number of units (None: unknown).
        desc: what is being done (``testing mvtec``).
        enabled: False gives a reporter that does nothing.
        stream: where the bar goes (default ``sys.stderr``); a bar only on a terminal.
        every: fraction of ``total`` between plain lines.
        interval: seconds between plain lines at the most.
    """
    if not enabled:
        return _Silent()
    stream = sys.stderr if stream is None else stream
    if getattr(stream, "isatty", lambda: False)():
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True, file=stream)
    return _Lines(total, desc, unit, every, interval)


class _Silent:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, values: dict[str, Any] | None = None, **kw) -> None:
        pass

    def close(self) -> None:
        pass


class _Lines:
    """Logs ``desc: done/total (pct) rate [postfix]`` at fixed fractions or intervals."""

    def __init__(self, total, desc, unit, every, interval):
        self.total, self.desc, self.unit = total, desc, unit
        self.step = max(1, int(total * every)) if total else None
        self.interval = interval
        self.done = 0
        self.start = self.last_time = time.monotonic()
        self.next_mark = self.step
        self.postfix = ""

    def set_postfix(self, values: dict[str, Any] | None = None, **kw) -> None:
        values = dict(values or {}, **kw)
        self.postfix = " ".join(f"{k}={v}" for k, v in values.items())

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        due = (self.next_mark is not None and self.done >= self.next_mark) or now - self.last_time >= self.interval
        if due and (self.total is None or self.done < self.total):
            self._line(now)
            while self.next_mark is not None and self.next_mark <= self.done:
                self.next_mark += self.step

    def _line(self, now: float) -> None:
        self.last_time = now
        rate = self.done / max(now - self.start, 1e-9)
        of = f"/{self.total} ({100 * self.done / self.total:.0f}%)" if self.total else ""
        tail = f" {self.postfix}" if self.postfix else ""
        _log.info("%s: %d%s, %.2f %s/s%s", self.desc, self.done, of, rate, self.unit, tail)

    def close(self) -> None:
        if self.done:
            self._line(time.monotonic())
