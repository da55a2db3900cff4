"""The time of stage attempts that did not finish, so a resumed stage's cost counts them.

A stage that is killed and run again resumes from what the first attempt kept (rollout
replies, training checkpoints, evaluation turns), so the attempt that finishes is only part
of the stage's cost. While a stage computes, `stage_attempt` keeps a heartbeat file,
ROOT/attempts/<stage run>-<pid>-<start>.json, whose `alive` time it refreshes every
`HEARTBEAT_S` seconds; an attempt that raises marks its file ended, and one killed outright
(SIGKILL, a lost machine) leaves it as it was. When an attempt of the same stage run
finishes, it takes the seconds of every such unfinished attempt (`alive - started`, short by
at most one heartbeat for a kill) and removes their files; `mucode.orchestration` records
them in ROOT/timings.jsonl as `unfinished_s`.

Local directories only (a write every few seconds is no job for an object store; there
`unfinished_s` is 0). This module does not run or resume stages.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mucode.artifacts import local_directory, write_atomically

ATTEMPTS_DIR = "attempts"
HEARTBEAT_S = 5.0  # one small atomic write per interval


@dataclass
class Attempt:
    """One attempt of a stage run; `unfinished_s` is filled in when it finishes."""

    path: Path
    stage_run: str
    started: float
    unfinished_s: float = 0.0

    def beat(self, ended: bool = False) -> None:
        record = {"stage_run": self.stage_run, "pid": os.getpid(), "started": self.started, "alive": time.time(),
                  "ended": ended}
        write_atomically(self.path, json.dumps(record).encode())


def process_is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def is_unfinished(record: dict, stage_run: str) -> bool:
    """An attempt of `stage_run` that will not finish: it raised, or its process is gone."""
    return record.get("stage_run") == stage_run and (record.get("ended") or not process_is_running(record["pid"]))


def collect_unfinished(folder: Path, stage_run: str, keep: Path) -> float:
    """Seconds of the unfinished attempts of `stage_run` in `folder` (not `keep`); their files are removed."""
    seconds = 0.0
    for path in sorted(folder.glob("*.json")):
        if path == keep:
            continue
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # being written, or torn: a later attempt takes it
        if is_unfinished(record, stage_run):
            seconds += max(0.0, float(record["alive"]) - float(record["started"]))
            path.unlink(missing_ok=True)
    return seconds


def _heartbeat(attempt: Attempt, stop: threading.Event) -> None:
    while not stop.wait(HEARTBEAT_S):
        with contextlib.suppress(OSError):
            attempt.beat()


@contextlib.contextmanager
def stage_attempt(root: str, stage_run: str) -> Iterator[Attempt | None]:
    """Keep this attempt's heartbeat while the block runs; on success, fill in `unfinished_s`
    with the earlier unfinished attempts of `stage_run` (None for a remote `root`)."""
    directory = local_directory(root)
    if directory is None:
        yield None
        return
    folder = directory / ATTEMPTS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    started = time.time()
    safe_name = "".join(c if c.isalnum() or c in "-_." else "_" for c in stage_run)
    attempt = Attempt(folder / f"{safe_name}-{os.getpid()}-{time.time_ns()}.json", stage_run, started)
    attempt.beat()
    stop = threading.Event()
    beating = threading.Thread(target=_heartbeat, args=(attempt, stop), daemon=True, name=f"heartbeat {stage_run}")
    beating.start()
    finished = False
    try:
        yield attempt
        finished = True
    finally:
        stop.set()
        beating.join()
        if not finished:  # it raised: the next attempt to finish counts it
            with contextlib.suppress(OSError):
                attempt.beat(ended=True)
    attempt.unfinished_s = collect_unfinished(folder, stage_run, keep=attempt.path)
    attempt.path.unlink(missing_ok=True)
