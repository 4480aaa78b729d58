"""User-facing errors, and an exception's text as one line.

Anything a user can cause (a missing file, a bad argument, weights that cannot be had offline)
raises :class:`S2SWError` with a one-line message that names the file or argument and says what
to do. The CLI prints that line on stderr and exits non-zero, without a traceback.

The library names its own arguments and fields (``batch_size``), never command-line flags: an
error about fields lists them in :attr:`S2SWError.fields`, and the command line shows each
field's flag next to it with :meth:`S2SWError.with_flags` and its own field-to-flag table.
"""

from __future__ import annotations

import math
import numbers
import re
from typing import Iterable, Mapping

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# where a field's clause ends in a message: the next ';', ': ' or ')' (or the end); a ':' inside a
# value (cuda:1, HOST:PORT, a URL) does not end it
_CLAUSE_END = re.compile(r";|:(?=\s|$)|\)")


class S2SWError(Exception):
    """An error caused by user input; its message is shown to the user as it is.

    ``fields``: the arguments or configuration fields the message names (each as a word), in
    the order they appear; the command line maps them to its flags (:meth:`with_flags`).
    """

    def __init__(self, message: str = "", *, fields: Iterable[str] = ()) -> None:
        super().__init__(message)
        self.fields = tuple(fields)

    def with_flags(self, flags: Mapping[str, str | None]) -> str:
        """The message with `` (FLAG)`` after the clause that names each field that has a flag in
        ``flags`` (a clause ends at the next ``;``, ``: `` or ``)``): ``batch_size must be a
        positive integer, got 0`` becomes ``... got 0 (--batch-size)``. The fields are looked for
        in their order, each after the previous one; the flags of fields named in one clause are
        shown together, ``(--reference, --shots)``."""
        text, start = str(self), 0
        at_clause_ends: dict[int, list[str]] = {}
        for name in self.fields:
            # the field as a word of the message: after a space or '(' (not inside a path)
            m = re.compile(rf"(?<![^\s(]){re.escape(name)}(?![^\s,:;)=])").search(text, start)
            if m is None:
                continue
            start = m.end()
            flag = flags.get(name)
            if not flag:
                continue
            end = _CLAUSE_END.search(text, m.end())
            shown = at_clause_ends.setdefault(end.start() if end else len(text), [])
            if flag not in shown:
                shown.append(flag)
        for at in sorted(at_clause_ends, reverse=True):
            text = f"{text[:at]} ({', '.join(at_clause_ends[at])}){text[at:]}"
        return text


def first_line(exc: BaseException, limit: int = 200) -> str:
    """``exc`` as one short plain line, for a message that quotes why something failed: an
    ``OSError``'s reason (``strerror``) without its errno and path, else the first non-empty line
    of its text without ANSI colour codes (the type's name when there is none), at most ``limit``
    characters (longer ones end with ``...``)."""
    reason = getattr(exc, "strerror", None) if isinstance(exc, OSError) else None
    text = reason or _ANSI.sub("", str(exc))
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    line = lines[0] if lines else type(exc).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


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
    with ``lo_open``; a bound that is None is open-ended); otherwise an S2SWError about the
    field ``name`` (in :attr:`S2SWError.fields`)."""
    lo_text = "" if lo is None else f"{'>' if lo_open else '>='} {lo:g}"
    hi_text = "" if hi is None else f"<= {hi:g}"
    want = " and ".join(t for t in (lo_text, hi_text) if t)
    kind = "an integer" if integer else "a finite number"
    error = S2SWError(f"{name} must be {kind}{' ' + want if want else ''}, got {value!r}", fields=[name])
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise error
    if not math.isfinite(value) or (integer and not float(value).is_integer()):
        raise error
    if (lo is not None and (value < lo or (lo_open and value == lo))) or (hi is not None and value > hi):
        raise error
    return int(value) if integer else value


class InferenceTimeout(S2SWError):
    """A model call that did not finish within its time limit (``inference_timeout``)."""
