"""The worker's C allocator, set for what a forward pass does: free the same megabytes it takes next.

A forward pass allocates and frees tens of blocks of 0.1-5 MB (feature maps, the RoIAlign gather's
tables, OpenVINO's outputs). glibc's malloc maps blocks over its mmap threshold afresh, and gives
the free top of its heap back to the kernel over its trim threshold; both start at 128 KiB and
adapt to the largest block freed so far, so where they stand depends on a process's history. In
TorchServe's workers they stayed low: every request mapped its memory back in, page by page
(thousands of minor page faults a request: tests/test_allocator.py; docs/performance.md "Serving cost").
`keep_freed_memory` starts them where glibc's own rule would end: the mmap threshold at the most it
adapts to on a 64-bit machine (32 MiB), the trim threshold at twice that, as the rule sets it. A
worker then keeps up to 64 MiB of freed memory, and its requests fault none.
"""

from __future__ import annotations

import ctypes

# mallopt's parameters (glibc's malloc.h).
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 32 * 2**20  # glibc's ceiling for its adaptive mmap threshold (DEFAULT_MMAP_THRESHOLD_MAX)
TRIM_THRESHOLD = 2 * MMAP_THRESHOLD


def keep_freed_memory() -> bool:
    """Sets this process's malloc thresholds; whether it could (a C library without glibc's
    mallopt, as on macOS, is left as it is)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process already runs on
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
