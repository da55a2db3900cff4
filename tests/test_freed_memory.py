"""keep_freed_memory: glibc keeps freed tensors' memory for reuse, so the kernel is not asked again;
return_freed_memory: at a stage's end that memory goes back to the kernel."""

from __future__ import annotations

import subprocess
import sys

import pytest

SCRIPT = """
import os, sys
import numpy as np
if sys.argv[1] == "tuned":
    from mucode.freed_memory import keep_freed_memory
    assert keep_freed_memory() and keep_freed_memory()  # once per process, cached
sizes = np.random.default_rng(0).integers(1 << 20, 24 << 20, size=(400, 4))  # 1-24 MiB, like activations
before = os.times().system
for row in sizes:
    blocks = [np.ones(int(size), dtype=np.uint8) for size in row]
    del blocks
print(os.times().system - before)
"""


def system_seconds(mode: str) -> float:
    done = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_freed_blocks_are_reused_instead_of_faulted_in_again():
    # ~20 GB of blocks of mixed sizes: glibc's default returns them to the kernel and faults
    # them in again (~0.25 s of kernel time here); kept for reuse, almost none.
    default, tuned = system_seconds("default"), system_seconds("tuned")
    assert tuned < default / 3 and default > 0.05, (default, tuned)


RETAINED = """
import numpy as np
from mucode.freed_memory import keep_freed_memory, return_freed_memory

def rss_mib():
    with open("/proc/self/status") as status:
        return int(next(line for line in status if line.startswith("VmRSS:")).split()[1]) // 1024

keep_freed_memory()
start = rss_mib()
blocks = [np.ones(3 << 20, dtype=np.uint8) for _ in range(250)]  # 750 MiB in 3 MiB blocks: heap, not mmap
keeper = blocks[-1]  # one live block at the top keeps glibc from trimming the heap by itself
del blocks
held = rss_mib()
assert return_freed_memory()
print(start, held, rss_mib())
"""


def test_freed_heap_memory_goes_back_to_the_kernel_when_returned():
    done = subprocess.run([sys.executable, "-c", RETAINED], capture_output=True, text=True, check=True)
    start, held, after = map(int, done.stdout.split())
    assert held - start > 600  # freed, but still resident: kept for reuse
    assert after - start < 100, (start, held, after)
