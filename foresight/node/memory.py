"""Handing freed memory back to the system, so a node's resident size returns after a burst.

glibc keeps memory freed by other threads in per-thread arenas and raises its mmap threshold after
large frees, so replies and decoded frames that were freed long ago still count as resident: a
node that served a few hundred pipelined requests stayed hundreds of MiB above where it started.
`malloc_trim(0)` returns the free pages of every arena. Other C libraries (musl, macOS) have no
such call; there `trim` does nothing and says so.
"""

from __future__ import annotations

import ctypes
import logging
from functools import cache

log = logging.getLogger(__name__)


@cache
def _malloc_trim() -> ctypes._CFuncPtr | None:
    try:
        trim = ctypes.CDLL(None).malloc_trim  # this process's own C library
    except (AttributeError, OSError):
        log.info("this C library has no malloc_trim; freed memory is returned as it decides")
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def trim() -> bool:
    """Return free heap pages to the system; True if the C library released any."""
    trim_call = _malloc_trim()
    return bool(trim_call(0)) if trim_call is not None else False
