"""Keep freed heap memory in the process, so tensors are not page-faulted in again and again.

glibc hands every allocation above its mmap threshold (128 KiB to 32 MiB, adaptive) to the
kernel with mmap and returns it with munmap when freed; the next tensor of that size then
faults in fresh zeroed pages. Model inference and training allocate and free such tensors
at every step, and in a VM a page fault is expensive (measured ~4.7 µs here): a rollout
stage spent most of its CPU time in the kernel. `keep_freed_memory` raises the thresholds
once per process (mallopt), so freed blocks stay in the heap for reuse. The price: once a
stage that held gigabytes (a training run) ends, its freed blocks stay resident and the next
stage starts from that high level; `return_freed_memory` hands them back (malloc_trim) at a
stage's end. Both do nothing where the C library is not glibc. This module does not limit or
measure memory (`mucode.peak_rss` measures).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc

# mallopt parameters (glibc malloc.h)
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
MMAP_THRESHOLD_BYTES = 32 << 20  # glibc's maximum: larger blocks still come from mmap
TRIM_THRESHOLD_BYTES = 1 << 30  # give memory back only when 1 GiB lies free at the heap top
TOP_PAD_BYTES = 64 << 20


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc (has mallopt and malloc_trim), else None."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt, libc.malloc_trim
    except (OSError, AttributeError):
        return None  # not glibc (musl, macOS): nothing to tune
    return libc


@functools.cache
def keep_freed_memory() -> bool:
    """Tune glibc malloc for reuse; True when it took effect (once per process)."""
    libc = _glibc()
    if libc is None:
        return False
    mallopt = libc.mallopt
    settings = ((M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES), (M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES),
                (M_TOP_PAD, TOP_PAD_BYTES))
    return all(mallopt(parameter, value) == 1 for parameter, value in settings)


def return_freed_memory() -> bool:
    """Collect garbage, then give the heap's free pages back to the kernel; True where glibc did it.

    Call it when a stage is done with its model: what it freed then leaves the resident set
    instead of staying in the heap for reuse.
    """
    gc.collect()
    return hand_back_free_pages()


def hand_back_free_pages() -> bool:
    """Give the heap's free pages back to the kernel (no garbage collection: cheap enough to
    call after every generation batch); True where glibc did it."""
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True
