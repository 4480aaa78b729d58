"""User-facing errors.

Anything a user can cause (a missing file, a bad argument, weights that cannot be had offline)
raises :class:`S2SWError` with a one-line message that names the file or argument and says what
to do. The CLI prints that line on stderr and exits non-zero, without a traceback.
"""


class S2SWError(Exception):
    """An error caused by user input; its message is shown to the user as it is."""


class InferenceTimeout(S2SWError):
    """A model call that did not finish within its time limit (``--inference-timeout``)."""
