"""Argument value types: each parses one flag's text or raises ``argparse.ArgumentTypeError``,
which the parser turns into one ``error:`` line."""

from __future__ import annotations

import argparse
import math

#: largest seed (the training configuration's limit, within every generator's range)
SEED_MAX = 2**63 - 2


def finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


def positive_int(text: str) -> int:
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative(text: str) -> float:
    value = finite(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text!r}")
    return value


def positive(text: str) -> float:
    value = finite(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text!r}")
    return value


def fraction(text: str) -> float:
    value = finite(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1), got {text!r}")
    return value


def unit_interval(text: str) -> float:
    value = finite(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text!r}")
    return value


def share(text: str) -> float:
    value = finite(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text!r}")
    return value


def seed_value(text: str) -> int:
    value = _integer(text)
    if not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"must be in 0..{SEED_MAX}, got {value}")
    return value


def _out_of_range(value, text: str, lo: float, hi: float | None, lo_open: bool = False) -> str | None:
    """Why ``value`` is not in the range (worded like the other types here), or None."""
    if lo_open and value <= lo:
        return f"must be positive, got {text}" if lo == 0 else f"must be > {lo:g}, got {text}"
    if value < lo:
        return f"must be at least 1, got {text}" if lo == 1 else f"must be >= {lo:g}, got {text}"
    if hi is not None and value > hi:
        return f"must be <= {hi:g}, got {text}"
    return None


def int_range(lo: int, hi: int | None = None):
    """An integer flag in ``[lo, hi]`` (``hi`` None: no upper bound)."""

    def parse(text: str) -> int:
        value = _integer(text)
        problem = _out_of_range(value, str(value), lo, hi)
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return value

    parse.__name__ = "integer"
    return parse


def float_range(lo: float, hi: float, *, lo_open: bool = False):
    """A finite number flag in ``[lo, hi]`` (``(lo, hi]`` with ``lo_open``)."""

    def parse(text: str) -> float:
        problem = _out_of_range(finite(text), repr(text), lo, hi, lo_open)
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return finite(text)

    parse.__name__ = "number"
    return parse


#: ``--port``: 0 (any free port) to 65535.
port = int_range(0, 65535)
#: process or thread counts (``--workers``): 0 (none) up to 256.
worker_count = int_range(0, 256)
#: images per model call (``--batch-size``, ``--max-batch``): a batch is held in memory at once.
batch_count = int_range(1, 4096)
#: megabytes or megapixels (memory limits): more than 0, at most 10**9 (1 PB, 10**15 pixels).
mega = float_range(0, 1e9, lo_open=True)
