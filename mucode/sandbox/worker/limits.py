"""Per-program resource limits, read from a job message.

The host chooses the wall-clock timeout and the memory limit; the other bounds are fixed
here so both backends apply the same ones. Does not apply them (confine.py does).
"""

import math
from dataclasses import dataclass

MIN_MEMORY_MB = 64


class JobError(ValueError):
    """A job message is malformed; the text says which field and how to fix it."""


@dataclass(frozen=True)
class Limits:
    timeout_s: float
    memory_mb: int
    max_processes: int = 32  # processes + threads of the program's uid (RLIMIT_NPROC)
    max_file_mb: int = 16  # largest file the program may write (RLIMIT_FSIZE)
    max_open_files: int = 256
    max_output_bytes: int = 64 * 1024  # stdout+stderr kept; the rest is read and dropped
    max_feedback_chars: int = 2048
    max_verdict_bytes: int = 1024 * 1024

    @property
    def cpu_seconds(self) -> int:
        """Soft CPU limit (SIGXCPU): the wall-clock timeout rounded up."""
        return max(1, math.ceil(self.timeout_s))


def limits_from_job(job: dict) -> Limits:
    timeout_s = job.get("timeout_s")
    memory_mb = job.get("memory_mb")
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not 0 < timeout_s <= 3600:
        raise JobError(f"job field timeout_s must be a number of seconds in (0, 3600], got {timeout_s!r}")
    if isinstance(memory_mb, bool) or not isinstance(memory_mb, int) or memory_mb < MIN_MEMORY_MB:
        raise JobError(f"job field memory_mb must be an integer >= {MIN_MEMORY_MB}, got {memory_mb!r}")
    return Limits(timeout_s=float(timeout_s), memory_mb=memory_mb)
