"""Keep freed heap memory in the process, so tensors are not page-faulted in again and again.

glibc hands every allocation above its mmap threshold (128 KiB to 32 MiB, adaptive) to the
kernel with mmap and returns it with munmap when freed; the next tensor of that size then
faults in fresh zeroed pages. Model inference and training allocate and free such tensors
at every step, and in a VM a page fault is expensive (measured ~4.7 µs here): a rollout
stage spent most of its CPU time in the kernel. `keep_freed_memory` raises the thresholds
once per process (mallopt), so freed blocks stay in the heap for reuse. It does nothing
where the C library is not glibc. It does not limit or measure memory.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

# mallopt parameters (glibc malloc.h)
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
MMAP_THRESHOLD_BYTES = 32 << 20  # glibc's maximum: larger blocks still come from mmap
TRIM_THRESHOLD_BYTES = 1 << 30  # give memory back only when 1 GiB lies free at the heap top
TOP_PAD_BYTES = 64 << 20


@functools.cache
def keep_freed_memory() -> bool:
    """Tune glibc malloc for reuse; True when it took effect (once per process)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False  # not glibc (musl, macOS): nothing to tune
    settings = ((M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES), (M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES),
                (M_TOP_PAD, TOP_PAD_BYTES))
    return all(mallopt(parameter, value) == 1 for parameter, value in settings)
