"""How many CPU threads torch should use for generation on this machine.

Two facts drive this. A container may see the host's cores while only a few are its
own (affinity, cgroup quota). And on an oversubscribed machine every parallel torch op
waits for its slowest, descheduled thread: on 2 busy cores (load ~7) one thread
measured 5-10x faster than two, while on a quiet machine all cores win. Thread count
does not change results here (float32 logits were bitwise equal for 1 and 2 threads),
so adapting it per batch keeps runs reproducible.

This module only computes numbers; the engine calls ``torch.set_num_threads``.
"""

from __future__ import annotations

import os
from pathlib import Path


def cpu_thread_budget(cgroup_cpu_max: str | None = None) -> int:
    """CPU threads this process may use: its CPU affinity, capped by a cgroup v2 quota."""
    budget = len(os.sched_getaffinity(0))
    text = cgroup_cpu_max if cgroup_cpu_max is not None else read_cgroup_cpu_max()
    fields = text.split()
    if len(fields) == 2 and fields[0] != "max":
        budget = min(budget, max(1, int(fields[0]) // int(fields[1])))
    return budget


def read_cgroup_cpu_max() -> str:
    """The cgroup v2 CPU quota line (``"<quota> <period>"`` or ``"max ..."``), or ``""``."""
    try:
        return Path("/sys/fs/cgroup/cpu.max").read_text()
    except OSError:
        return ""


def auto_num_threads(budget: int, load_average: float, own_threads: int) -> int:
    """Threads for the next call: the budget minus the cores other work keeps busy.

    ``load_average`` is the 1-minute load, which includes our own previous call's
    ``own_threads``; what remains is other processes' demand, rounded to whole cores.
    """
    others = max(0.0, load_average - own_threads)
    return max(1, min(budget, budget - round(others)))
