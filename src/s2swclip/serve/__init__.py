"""The inspection service (``s2swclip serve``): REST API and web page over one detector.

:func:`~s2swclip.serve.app.create_app` builds the FastAPI app around a loaded detector;
:func:`~s2swclip.serve.app.serve` is the command's entry point.
"""
