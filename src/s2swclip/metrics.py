"""Public metrics API: ``from s2swclip.metrics import aupro, image_auroc, ...``.

Re-exports the public names of :mod:`s2swclip.eval.metrics` (its ``__all__``); see that package
for the definitions and methods.
"""

from .eval.metrics import *  # noqa: F401,F403
from .eval.metrics import __all__  # noqa: F401
