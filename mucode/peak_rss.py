"""The peak resident memory (RSS) of one stretch of work in this process, from the kernel's own counter.

Linux keeps each process's peak RSS as VmHWM in /proc/self/status, and writing "5" to
/proc/self/clear_refs resets it to the current RSS (Linux 4.0+). `reset_peak_rss` at the
start of a stage and `peak_rss_bytes` at its end therefore give that stage's own peak, even
in a long-lived process that ran other stages before; `ru_maxrss` cannot, it only grows.
Elsewhere (no /proc, not writable) both report that they could not (False / None).
It sees this process only, not its children, and it does not limit memory.
"""

from __future__ import annotations

from pathlib import Path

STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")
RESET_PEAK = "5"  # clear_refs command: reset the peak RSS (VmHWM) to the current RSS


def reset_peak_rss() -> bool:
    """Start a new peak-RSS window; False where the kernel offers no reset."""
    try:
        CLEAR_REFS.write_text(RESET_PEAK)
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int | None:
    """The peak RSS since the process started or since the last `reset_peak_rss`; None where unknown."""
    try:
        status = STATUS.read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024  # reported in kB
    return None


def gib(size_bytes: int | None) -> float | None:
    """Bytes as GiB rounded to 0.01, None stays None (for timings and reports)."""
    return None if size_bytes is None else round(size_bytes / 2**30, 2)
