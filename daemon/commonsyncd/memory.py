"""How the daemon's process asks the C allocator to give large buffers back.

Records, messages and their sealed forms can each take megabytes (a record may list 400,000
chunks). glibc serves such a buffer with its own ``mmap`` and unmaps it when it is freed, but
it also raises its threshold for doing so to the largest buffer freed so far, up to 32 MiB:
after the first large record, every later one comes from the heap, whose free pages stay
with the process. A peer sending a dozen records of 200,000 chunks left a daemon 300 MiB
bigger for good; with the threshold pinned at its default it grows by a third of that.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import platform

log = logging.getLogger(__name__)

#: ``M_MMAP_THRESHOLD`` of glibc's ``mallopt(3)``; setting it turns off the sliding threshold.
_M_MMAP_THRESHOLD = -3
#: glibc's default: buffers from 128 KiB up get their own mapping.
MMAP_THRESHOLD = 128 * 1024


def return_large_buffers() -> bool:
    """Pin glibc's mmap threshold (a no-op on another C library); whether it was pinned."""
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        pinned = bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    except (OSError, AttributeError) as exc:
        log.debug("could not pin the allocator's mmap threshold: %s", exc)
        return False
    return pinned
