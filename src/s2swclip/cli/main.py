"""The ``s2swclip`` command line: the parser of every command and :func:`main`.

Each command lives in its own module of this package (argument parsing and one call into the
library). User mistakes end with one line on stderr (``error: ...``) and exit status 2; no
traceback. Messages of the library (``logging``, logger ``s2swclip``) are shown on stderr:
``warning: ...`` for warnings, plain lines for progress and information (``--quiet``: warnings only).
Control characters in messages and in the names printed (they may come from files) are shown
escaped (:func:`~s2swclip.errors.safe_text`): every message is one line that cannot act on the
terminal.
"""

from __future__ import annotations

import argparse
import logging
import sys

from .. import __version__
from ..allocator import keep_freed_memory
from ..errors import S2SWError, safe_text
from . import demo, evaluate, export, predict, profile, serve, train, watch

EXIT_USER_ERROR = 2


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one ``error:`` line like every other user error."""

    def error(self, message):
        raise S2SWError(f"{message} (see '{self.prog} --help')")


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command; ``args.func(args)`` runs the chosen one."""
    parser = _Parser(prog="s2swclip", description="Zero-shot visual anomaly detection with S2SWCLIP.")
    parser.add_argument("--version", action="version", version=f"s2swclip {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    train.add_parser(sub)
    evaluate.add_parser(sub)
    predict.add_parser(sub)
    export.add_parser(sub)
    demo.add_demo_parser(sub)
    demo.add_build_meta_parser(sub)
    serve.add_parser(sub)
    watch.add_parser(sub)
    profile.add_parser(sub)
    return parser


def _os_error_line(err: OSError) -> str:
    """One line for a file-system failure that no check foresaw (an output folder that cannot be
    created, a disk that fills up): the path, the reason and what to do."""
    where = err.filename if err.filename is not None else "a file"
    reason = err.strerror or str(err)
    return f"cannot create or write {where}: {reason}; choose another --out or free the disk"


class _Formatter(logging.Formatter):
    """``warning: `` before warnings; control characters (from file names, manifests, ...) escaped,
    so that a message is one line that cannot act on the terminal."""

    def format(self, record: logging.LogRecord) -> str:
        msg = safe_text(record.getMessage())
        return f"warning: {msg}" if record.levelno >= logging.WARNING else msg


def main(argv: list[str] | None = None) -> int:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    root = logging.getLogger("s2swclip")
    root.addHandler(handler)
    saved_level, root.propagate = root.level, False
    try:
        try:
            parser = build_parser()
            args = parser.parse_args(argv)
        except SystemExit as e:  # --help, --version
            return int(e.code or 0)
        if not getattr(args, "command", None):
            parser.print_help()
            return EXIT_USER_ERROR
        root.setLevel(logging.WARNING if getattr(args, "quiet", False) else logging.INFO)
        keep_freed_memory()  # the process is the command's: freed tensors are reused, not unmapped
        return int(args.func(args) or 0)
    except S2SWError as e:
        from .options import flag_message

        print(f"error: {safe_text(flag_message(e))}", file=sys.stderr)
        return EXIT_USER_ERROR
    except OSError as e:  # an output that cannot be created or written, found only when writing
        print(f"error: {safe_text(_os_error_line(e))}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        root.removeHandler(handler)
        root.setLevel(saved_level)
        root.propagate = True
