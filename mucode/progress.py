"""Progress of long stages: a rich bar in the terminal and a Prefect progress artifact.

`stage_progress(total, description)` yields `advance(done, detail)`: it redraws the terminal
bar and, inside a Prefect flow or task run, updates a progress artifact (`mucode.publish`,
throttled, so a stage with thousands of steps makes a handful of API calls). Outside a run it only draws.
When stderr is not a terminal (nohup, CI logs) it prints a plain line at most once a
minute instead of the bar, so a log shows how far an hour-long stage got.
It measures nothing itself; callers pass counts.
"""

from __future__ import annotations

import contextlib
import sys
import time
from typing import Callable, Iterator

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

PLAIN_LINE_EVERY_S = 60.0

Advance = Callable[[int, str], None]


class _PlainLines:
    """Progress as a log line every `every_s` seconds (none for a stage shorter than that)."""

    def __init__(self, description: str, total: int, every_s: float | None = None):
        self.description, self.total = description, total
        self.every_s = PLAIN_LINE_EVERY_S if every_s is None else every_s
        self.started = self.last_line = time.monotonic()

    def update(self, done: int, detail: str) -> None:
        now = time.monotonic()
        if now - self.last_line >= self.every_s:
            minutes = (now - self.started) / 60
            print(f"{self.description}: {done}/{self.total} {detail} ({minutes:.0f} min)".rstrip(),
                  file=sys.stderr, flush=True)
            self.last_line = now


@contextlib.contextmanager
def stage_progress(total: int, description: str) -> Iterator[Advance]:
    """Yield `advance(done, detail)` where `done` is the absolute count completed so far."""
    prefect_progress = _prefect_progress(description)
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("{task.fields[detail]}")]
    draw_bar = sys.stderr.isatty() or _force_bar()
    plain_lines = None if draw_bar else _PlainLines(description, total)
    with Progress(*columns, transient=False, disable=not draw_bar) as bar:
        task = bar.add_task(description, total=total, detail="")
        last = {"done": 0, "detail": ""}

        def advance(done: int, detail: str = "") -> None:
            last.update(done=done, detail=detail)
            bar.update(task, completed=min(done, total), detail=detail)
            if plain_lines:
                plain_lines.update(min(done, total), detail)
            if prefect_progress:
                prefect_progress.update(min(done, total) / max(total, 1), detail)

        yield advance
        if prefect_progress:
            prefect_progress.update(min(last["done"], total) / max(total, 1), last["detail"], force=True)


def _prefect_progress(description: str):
    from mucode.orchestration import in_a_run

    if not in_a_run():
        return None
    from mucode.publish import ProgressArtifact

    return ProgressArtifact(description)


def _force_bar() -> bool:
    import os

    return os.environ.get("MUCODE_PROGRESS", "") == "1"


@contextlib.contextmanager
def rollout_progress(num_trajectories: int, max_turns: int):
    """A progress callback for `run_rollouts`: requests done per turn, and tokens/s."""
    with stage_progress(num_trajectories * max_turns, "rollout") as advance:
        finished_turns = {"requests": 0}
        current = {"turn": 0}

        def on_stats(stats) -> None:
            if stats.turn != current["turn"]:
                # Trajectories that stopped early never make their later requests: count them as done.
                finished_turns["requests"] = (stats.turn - 1) * num_trajectories
                current["turn"] = stats.turn
            done = finished_turns["requests"] + stats.done_in_turn + (num_trajectories - stats.live)
            advance(done, f"turn {stats.turn}/{max_turns}  live {stats.live}  {stats.tokens_per_s:.0f} tok/s")

        yield on_stats
