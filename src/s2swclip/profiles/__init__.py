"""Product profiles: many products served by one backbone, each with its own reference bank,
few-shot weight and threshold (``s2swclip profile ...``, ``serve --profiles DIR``).

Names are imported lazily: the manifest part is torch-free (the command line's parser reads its
limits), the store and the runtime state need PyTorch.
"""

import importlib

_WHERE = {name: "manifest" for name in ("InvalidName", "OverLimit", "ProfileExists", "ProfileNotFound", "check_name",
                                        "DEFAULT_MAX_PROFILES", "DEFAULT_MAX_REFERENCES")}
_WHERE.update({name: "runtime" for name in ("LiveProfiles", "Profile", "ProfileScorer", "bank_bytes_per_reference")})
_WHERE.update({name: "store" for name in ("GoodImage", "ProfileStore")})
_WHERE["DiskSync"] = "sync"

__all__ = sorted(_WHERE)


def __getattr__(name):
    if name in _WHERE:
        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
