"""``s2swclip.errors``: an exception's first line, and fields shown with the command line's flags."""

import errno

import pytest

from s2swclip.errors import S2SWError, first_line


@pytest.mark.parametrize("exc,expected", [
    (ValueError("bad header\nTraceback detail\nmore"), "bad header"),
    (ValueError("\n\n  \x1b[31mred reason\x1b[0m  \nnext"), "red reason"),
    (ValueError(""), "ValueError"),
    (KeyError(), "KeyError"),
    (OSError(errno.ENOENT, "No such file or directory", "/x/y"), "No such file or directory"),
    (OSError("plain text"), "plain text"),
    (RuntimeError("x" * 500), "x" * 197 + "..."),
])
def test_first_line(exc, expected):
    assert first_line(exc) == expected


def test_first_line_limit():
    assert first_line(ValueError("abcdef"), limit=5) == "ab..." and first_line(ValueError("abcde"), limit=5) == "abcde"


FLAGS = {"batch_size": "--batch-size", "items": "--data", "lr": "--lr", "detector_options": None}


@pytest.mark.parametrize("message,fields,expected", [
    ("batch_size must be a positive integer, got 0", ["batch_size"],
     "batch_size must be a positive integer, got 0 (--batch-size)"),
    # each clause ends at ';', ':' or ')'; a field inside a path is not the field
    ("cannot resume from /runs/items/s.st: another configuration (items was 4, now 5; lr was 0.1, now 1.0; "
     "detector_options was {}, now {'a': 1}); choose another --out", ["items", "lr", "detector_options"],
     "cannot resume from /runs/items/s.st: another configuration (items was 4, now 5 (--data); "
     "lr was 0.1, now 1.0 (--lr); detector_options was {}, now {'a': 1}); choose another --out"),
    ("invalid lr 'x': choose a number", ["lr", "unknown_field"], "invalid lr 'x' (--lr): choose a number"),
    ("no fields here", [], "no fields here"),
    # several fields in one clause: their flags together, once each
    ("lr 0.1 and batch_size 0 do not go together; lower lr", ["lr", "batch_size", "lr"],
     "lr 0.1 and batch_size 0 do not go together (--lr, --batch-size); lower lr (--lr)"),
    # a ':' inside a value (host:port, cuda:1) ends no clause; ': ' does
    ("batch_size host:8 is not a number: use digits", ["batch_size"],
     "batch_size host:8 is not a number (--batch-size): use digits"),
    # each field is looked for after the previous one, flag or not
    ("lr of detector_options: lr 2", ["detector_options", "lr"], "lr of detector_options: lr 2 (--lr)"),
])
def test_with_flags(message, fields, expected):
    e = S2SWError(message, fields=fields)
    assert str(e) == message and e.fields == tuple(fields)
    assert e.with_flags(FLAGS) == expected
