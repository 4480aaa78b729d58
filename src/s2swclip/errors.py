"""User-facing errors.

Anything a user can cause (a missing file, a bad argument, weights that cannot be had offline)
raises :class:`S2SWError` with a one-line message that names the file or argument and says what
to do. The CLI prints that line on stderr and exits non-zero, without a traceback.
"""

import math
import numbers


class S2SWError(Exception):
    """An error caused by user input; its message is shown to the user as it is."""


def safe_text(value: object) -> str:
    """``value`` as text that cannot act on a terminal or a log: every control or invisible
    formatting character (ANSI escapes, newlines, carriage returns, bidirectional overrides, ...)
    is shown as its escape (``\\x1b``, ``\\n``, ``\\u202e``). For anything that came from a file
    (names, manifest and provenance strings) before it is printed or logged."""
    text = str(value)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def safe_lines(text: str) -> str:
    """Several lines of text, each through :func:`safe_text` (the line breaks are kept)."""
    return "\n".join(safe_text(line) for line in str(text).split("\n"))


def check_number(name: str, value: object, lo: float | None = None, hi: float | None = None, *,
                 integer: bool = False, lo_open: bool = False) -> float | int:
    """``value`` as a finite number (an ``int`` with ``integer``) in ``[lo, hi]`` (``(lo, hi]``
    with ``lo_open``; a bound that is None is open-ended); S2SWError naming ``name`` otherwise."""
    lo_text = "" if lo is None else f"{'>' if lo_open else '>='} {lo:g}"
    hi_text = "" if hi is None else f"<= {hi:g}"
    want = " and ".join(t for t in (lo_text, hi_text) if t)
    kind = "an integer" if integer else "a finite number"
    message = f"{name} must be {kind}{' ' + want if want else ''}, got {value!r}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise S2SWError(message)
    if not math.isfinite(value) or (integer and not float(value).is_integer()):
        raise S2SWError(message)
    if (lo is not None and (value < lo or (lo_open and value == lo))) or (hi is not None and value > hi):
        raise S2SWError(message)
    return int(value) if integer else value
