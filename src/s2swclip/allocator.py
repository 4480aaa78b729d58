"""Keep freed memory in the process instead of handing it back to the system at once.

PyTorch's CPU kernels allocate a fresh output tensor for almost every operation; the model's
intermediate tensors are megabytes each (the multi-scale branch's ``[B, 384, C]`` ones are 9 MB
at batch 8). glibc's allocator serves blocks that large with ``mmap`` and returns them with
``munmap`` when they are freed, so every operation touches new pages: each page costs a page
fault, several times dearer in a virtual machine. Raising the ``mmap`` threshold and the trim
threshold lets freed blocks be reused instead (PyTorch's CPU tuning guide recommends jemalloc or
TCMalloc for the same reason; this needs no library preloaded). Measured on a 2-core VM, tiny
backbone at 112 px: 11-12 ms per image before, 7.8 after.

The cost is bounded: at most :data:`TRIM_THRESHOLD` bytes of free memory stay with the process,
and blocks over :data:`MMAP_THRESHOLD` are still mapped and unmapped as before.

Only the command line calls :func:`keep_freed_memory` (the process is its own); a program using
the library decides for itself. Elsewhere than glibc (macOS, Windows, musl) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

__all__ = ["MMAP_THRESHOLD", "TOP_PAD", "TRIM_THRESHOLD", "keep_freed_memory"]

log = logging.getLogger(__name__)

#: blocks from this size on are still mapped on their own (and unmapped when freed)
MMAP_THRESHOLD = 64 << 20
#: free memory at the top of the heap kept before it is given back
TRIM_THRESHOLD = 256 << 20
#: extra memory asked of the system each time the heap grows
TOP_PAD = 64 << 20

# mallopt parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3

_done: bool | None = None


def keep_freed_memory() -> bool:
    """Set glibc's thresholds (see the module docstring) once per process. Returns True when
    they are in effect, False where the platform's allocator is not glibc's."""
    global _done
    if _done is not None:
        return _done
    _done = False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = all(mallopt(param, value) == 1 for param, value in (
        (_M_MMAP_THRESHOLD, MMAP_THRESHOLD), (_M_TRIM_THRESHOLD, TRIM_THRESHOLD), (_M_TOP_PAD, TOP_PAD)))
    if not ok:
        log.debug("mallopt refused the allocator thresholds; the defaults stay")
    _done = ok
    return ok
