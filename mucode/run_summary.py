"""One summary table per flow run: every stage it went through, computed or cached.

A stage task's completion hook (`note_stage_outcome`, set by `mucode.orchestration.stage_task`)
fires for computed runs and for cache hits alike and notes the task run's name, state and
result under its flow run. `summarised_run(cfg, root)` wraps a flow's body and, when the body
ends (also when it fails), publishes the table: stage, state (computed / cached), artifact
path, rows, key metrics from the artifact's manifest, wall time in this run, wall time and peak
memory when it was computed (ROOT/timings.jsonl). This module runs no stage.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from mucode.artifacts import Artifact, ArtifactStore
from mucode.config import Config

SUMMARY_KEY = "summary"
KEY_METRICS = 4  # metrics shown per stage: the table stays one line per stage


@dataclass(frozen=True)
class StageOutcome:
    name: str  # the task run name, e.g. rollout-1
    cached: bool
    result: Any
    wall_s: float | None


_outcomes: dict[str, list[StageOutcome]] = {}
_lock = threading.Lock()


def note_stage_outcome(task: Any, task_run: Any, state: Any) -> None:
    """Prefect on_completion hook: remember what this stage returned in its flow run."""
    if task_run.flow_run_id is None:
        return
    try:
        result = state.result(raise_on_failure=False)
    except Exception:  # a result that cannot be read back still gets its row
        result = None
    wall = (task_run.end_time - task_run.start_time).total_seconds() if task_run.end_time and task_run.start_time \
        else None
    outcome = StageOutcome(task_run.name, state.name == "Cached", result, wall)
    with _lock:
        _outcomes.setdefault(str(task_run.flow_run_id), []).append(outcome)


def take_outcomes(flow_run_id: str) -> list[StageOutcome]:
    with _lock:
        return _outcomes.pop(str(flow_run_id), [])


def current_outcomes() -> list[StageOutcome]:
    """The stages the current flow run went through so far (empty outside a flow run)."""
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        return []
    with _lock:
        return list(_outcomes.get(str(context.flow_run.id), []))


def stage_walls(outcomes: list[StageOutcome], timings: list[dict[str, Any]]) -> dict[str, float]:
    """Stage → wall seconds: this run's for computed stages, the computing run's for cached ones."""
    last_timing = {line.get("run"): line for line in timings}
    walls = {}
    for outcome in outcomes:
        wall = last_timing.get(outcome.name, {}).get("wall_s") if outcome.cached else outcome.wall_s
        if wall is not None:
            walls[outcome.name] = round(float(wall), 1)
    return walls


def _key_metrics(metrics: dict[str, Any]) -> str:
    scalars = [(name, value) for name, value in metrics.items()
               if isinstance(value, (int, float)) and not isinstance(value, bool)]
    return ", ".join(f"{name}={value:.4g}" for name, value in scalars[:KEY_METRICS])


def _peak_memory_mb(timing: dict[str, Any]) -> float | None:
    """The peak RSS a timings line reports, in MB, whatever its unit suffix."""
    for name, value in timing.items():
        if "rss" in name and isinstance(value, (int, float)):
            if name.endswith("_gb"):
                return round(value * 1024, 1)
            if name.endswith("_kb"):
                return round(value / 1024, 1)
            return round(value / 2**20, 1) if name.endswith("_bytes") else round(value, 1)
    return None


def summary_rows(outcomes: list[StageOutcome], root: str, timings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per stage outcome, in the order they completed; `timings` as read from ROOT/timings.jsonl."""
    store = ArtifactStore(root)
    last_timing = {line.get("run"): line for line in timings}
    rows = []
    for outcome in outcomes:
        artifacts = outcome.result if isinstance(outcome.result, (list, tuple)) else [outcome.result]
        refs = [item for item in artifacts if isinstance(item, Artifact)]
        metrics: dict[str, Any] = {}
        for ref in refs:
            try:
                metrics.update(store.manifest(ref).get("metrics", {}))
            except Exception:  # a missing manifest leaves the metrics empty, not the table
                pass
        timing = last_timing.get(outcome.name, {})
        paths = [ref.path for ref in refs] or ([str(outcome.result)] if isinstance(outcome.result, str) else [])
        rows.append({
            "stage": outcome.name,
            "state": "cached" if outcome.cached else "computed",
            "artifact": ", ".join(paths),
            "rows": sum(ref.rows or 0 for ref in refs) if any(ref.rows is not None for ref in refs) else "",
            "key metrics": _key_metrics(metrics),
            "wall s (this run)": round(outcome.wall_s, 1) if outcome.wall_s is not None else "",
            "wall s (computed)": round(timing["wall_s"], 1) if "wall_s" in timing else "",
            "peak memory MB": _peak_memory_mb(timing) or "",
        })
    return rows


def publish_summary(cfg: Config, root: str) -> list[dict[str, Any]]:
    """Publish this flow run's summary table (key `{experiment}-summary`); returns its rows."""
    from prefect.artifacts import create_table_artifact
    from prefect.context import FlowRunContext

    from mucode.orchestration import artifact_key, read_timings

    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        return []
    rows = summary_rows(take_outcomes(str(context.flow_run.id)), root, read_timings(root))
    if rows:
        create_table_artifact(rows, key=artifact_key(cfg.name, SUMMARY_KEY),
                              description=f"Every stage of this flow run of {cfg.name}, computed or cached")
    return rows


@contextmanager
def summarised_run(cfg: Config, root: str) -> Iterator[None]:
    """Run a flow's body, then publish its summary table, also when the body fails."""
    try:
        yield
    finally:
        publish_summary(cfg, root)
