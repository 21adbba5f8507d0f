"""glibc's allocator, set for a long-running proxy with connection churn.

uvloop gives every TLS connection a 256 KiB read buffer (malloc at connect, free at close). glibc's
default mmap threshold (128 KiB) is dynamic: the first such buffer freed raises it above 256 KiB, and
from then on the buffers come from the main heap, between small long-lived objects. Freed, they leave
holes the heap cannot return to the system, so RSS ratchets up with every wave of connections (the
soak run of 2026-12-01 saw 182 MB grow to 526 MB at a steady 2,000 connections, and stay there after
they closed). With the threshold fixed, each buffer is its own mapping and goes back whole when its
connection closes. `trim()` hands back what the heap holds free (malloc_trim), after waves of closes.

Only on glibc; elsewhere both are no-ops.
"""

from __future__ import annotations

import ctypes
import logging

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # glibc malloc.h
MMAP_THRESHOLD_BYTES = 128 * 1024
"""glibc's default value, fixed (setting it turns the dynamic adjustment off)."""


def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    if not hasattr(libc, "mallopt") or not hasattr(libc, "malloc_trim"):
        return None
    return libc


_LIBC = _glibc()


def tune() -> bool:
    """Fix the mmap threshold; True if glibc took it."""
    if _LIBC is None:
        return False
    taken = _LIBC.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
    if not taken:  # pragma: no cover - glibc refuses only out-of-range values
        log.debug("glibc refused mallopt(M_MMAP_THRESHOLD, %d)", MMAP_THRESHOLD_BYTES)
    return taken


def trim() -> bool:
    """Give the heap's free memory back to the system; True if any was released."""
    if _LIBC is None:
        return False
    return bool(_LIBC.malloc_trim(0))
