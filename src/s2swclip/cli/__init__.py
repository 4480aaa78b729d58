"""The ``s2swclip`` command line (one module per command; :mod:`.main` builds the parser)."""

from .main import build_parser, main

__all__ = ["build_parser", "main"]
