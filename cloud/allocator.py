"""glibc's malloc tuned for a server that allocates the same large arrays on every request.

glibc serves a block of 128 KiB or more with a fresh mmap and gives it back to the kernel when it is freed, and
trims free memory at the top of its heaps above a small threshold. So each request's arrays (a 256-item
reconstruction of 28x28 float32 is 800 KiB, plus its uint8 copy and temporaries) landed on fresh pages, each
faulted in and zeroed on first touch: 2.6 page faults per item served, and a 256-item request spent 0.7 ms of its
12 ms in them (the reply's conversion alone went from 0.7 to 0.2 ms). Keeping blocks up to ``MMAP_MIB`` on the heap
and up to ``KEEP_MIB`` of free heap per malloc arena reuses those pages from one request to the next.

Blocks larger than ``MMAP_MIB`` (what worst-case requests allocate) are still mapped and given back at once, so the
peak under hostile load is unchanged; what the process keeps after a burst is at most ``KEEP_MIB`` per arena (one
per thread that allocates, at most 8 per core). An operator who sets glibc's own ``MALLOC_*_`` variables keeps them.
"""

from __future__ import annotations

import ctypes
import os

M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's <malloc.h>
M_MMAP_THRESHOLD = -3
MMAP_MIB = 4  # blocks below this come from the heap, and are reused
KEEP_MIB = 16  # free memory an arena keeps instead of giving it back to the kernel


def tune_malloc(mmap_mib: int = MMAP_MIB, keep_mib: int = KEEP_MIB) -> bool:
    """Set the thresholds for this process; False when not applied (not glibc, or MALLOC_* set by the operator)."""
    if any(name.startswith("MALLOC_") for name in os.environ):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's own C library
    except (OSError, AttributeError):  # musl, macOS: no mallopt, their allocators behave differently
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, mmap_mib << 20)) and bool(mallopt(M_TRIM_THRESHOLD, keep_mib << 20))
