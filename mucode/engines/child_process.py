"""Run a converter in a child process and say in one line why it failed.

The ct2 and openvino engines convert checkpoints this way: the child loads every weight
once, and its memory goes back to the system when it exits. This module runs nothing else.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence


def failure_of(command: Sequence[str]) -> str | None:
    """Run ``command``; None when it succeeds, else its last line on stderr (or its exit code)."""
    done = subprocess.run(list(command), capture_output=True, text=True)
    if done.returncode == 0:
        return None
    lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
    return lines[-1] if lines else f"exit code {done.returncode}"
