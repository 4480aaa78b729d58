"""Product profiles: many products served by one backbone, each with its own reference bank,
few-shot weight and threshold (``s2swclip profile ...``, ``serve --profiles DIR``).

The names of :mod:`.runtime` and :mod:`.store` (which need PyTorch) are imported on first use:
the command line's parsers read the default limits without loading torch (``serve --model`` and
``predict --model`` run torch-free).
"""

from importlib import import_module

from .manifest import (DEFAULT_MAX_PROFILES, DEFAULT_MAX_REFERENCES, InvalidName, OverLimit, ProfileExists,
                       ProfileNotFound, check_name)

__all__ = ["InvalidName", "OverLimit", "ProfileExists", "ProfileNotFound",
           "DEFAULT_MAX_PROFILES", "DEFAULT_MAX_REFERENCES", "GoodImage", "LiveProfiles", "Profile", "ProfileScorer",
           "ProfileStore", "bank_bytes_per_reference", "check_name"]

_LAZY = {"LiveProfiles": ".runtime", "Profile": ".runtime", "ProfileScorer": ".runtime",
         "bank_bytes_per_reference": ".runtime", "GoodImage": ".store", "ProfileStore": ".store"}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(module, __name__), name)
    globals()[name] = value
    return value
