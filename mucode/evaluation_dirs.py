"""Evaluation directories: write one, read one back, find every one under a run directory.

An *evaluation directory* is any directory under the run directory holding

    rows.parquet   the search rows (schema: `mucode.best_of_n.ROW_SCHEMA`)
    summary.json   metric name -> value (`mucode.eval_summary.summarize`), intervals as
                   `<metric>.ci_low` / `<metric>.ci_high`
    meta.json      {"kind": "mucode-evaluation", "method", "dataset", "n", "selection",
                    "turns", "searches", "details": {generator, verifier, seed, ...}}

for example `RUN_DIR/eval/<label>/` in a pipeline run, or `OUT/` and `OUT/scaling/n<N>/` for
`mucode evaluate --out OUT`. `build_report(RUN_DIR)` finds every such directory (a
`summary.json` without a mucode `meta.json` beside it is not an evaluation and is skipped)
and writes `RUN_DIR/report.md`, `RUN_DIR/bon_at_t.png` and, when some method was evaluated
at several N, `RUN_DIR/scaling.png`.

meta.json is written last, so its presence marks a complete directory. This module renders
nothing (that is `mucode.report`) and computes no metrics.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from mucode.artifacts import write_atomically

META_KIND = "mucode-evaluation"
ROWS_FILE, SUMMARY_FILE, META_FILE = "rows.parquet", "summary.json", "meta.json"


class ReportError(RuntimeError):
    """The report cannot be built from what is on disk; the message is one line."""


@dataclass(frozen=True)
class EvaluationSummary:
    """One evaluation: what was evaluated (method, dataset, N, ...) and its metrics."""

    method: str
    dataset: str
    n: int
    selection: str
    turns: int
    searches: int
    metrics: dict[str, float]
    details: dict[str, Any] = field(default_factory=dict)
    label: str = ""

    @property
    def headline(self) -> str:
        return f"bon@{self.turns}"

    def interval(self, metric: str) -> tuple[float, float] | None:
        low, high = self.metrics.get(f"{metric}.ci_low"), self.metrics.get(f"{metric}.ci_high")
        return None if low is None or high is None else (low, high)

    def title(self) -> str:
        return f"{self.method}, N={self.n} ({self.selection})"


def save_evaluation(directory: str | Path, rows: pl.DataFrame, summary: EvaluationSummary) -> Path:
    """Write one evaluation directory (rows.parquet, summary.json, meta.json)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    partial_rows = directory / f".{ROWS_FILE}.partial"
    rows.write_parquet(partial_rows)
    os.replace(partial_rows, directory / ROWS_FILE)
    write_atomically(directory / SUMMARY_FILE, json.dumps(summary.metrics, indent=1).encode())
    meta = {"kind": META_KIND, "method": summary.method, "dataset": summary.dataset, "n": summary.n,
            "selection": summary.selection, "turns": summary.turns, "searches": summary.searches,
            "details": summary.details}
    # meta.json last: its presence marks a complete evaluation directory.
    write_atomically(directory / META_FILE, json.dumps(meta, indent=1).encode())
    return directory


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ReportError(f"{path}: unreadable JSON ({error}); rerun the evaluation that wrote it") from None


def load_evaluation(directory: str | Path, label: str = "") -> EvaluationSummary:
    directory = Path(directory)
    meta = _read_json(directory / META_FILE)
    if not isinstance(meta, dict) or meta.get("kind") != META_KIND:
        raise ReportError(f"{directory / META_FILE} is not a mucode evaluation meta.json")
    metrics = _read_json(directory / SUMMARY_FILE)
    try:
        return EvaluationSummary(
            method=str(meta["method"]), dataset=str(meta["dataset"]), n=int(meta["n"]),
            selection=str(meta["selection"]), turns=int(meta["turns"]), searches=int(meta["searches"]),
            metrics={str(name): float(value) for name, value in metrics.items()},
            details=dict(meta.get("details", {})), label=label or directory.name,
        )
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise ReportError(f"{directory}: malformed meta.json or summary.json ({error!r}); rerun its evaluation") from None


def _is_evaluation_dir(directory: Path) -> bool:
    meta = directory / META_FILE
    if not meta.is_file():
        return False
    try:
        return json.loads(meta.read_text()).get("kind") == META_KIND
    except (OSError, json.JSONDecodeError, AttributeError):
        return False


def load_evaluations(run_dir: str | Path) -> list[EvaluationSummary]:
    """Every evaluation directory under `run_dir` (itself included), in path order."""
    root = Path(run_dir)
    if not root.is_dir():
        raise ReportError(f"run directory {root} does not exist: pass the --out directory of mucode evaluate")
    found = sorted(path.parent for path in root.rglob(SUMMARY_FILE) if _is_evaluation_dir(path.parent))
    return [load_evaluation(directory, label=directory.relative_to(root).as_posix()) for directory in found]
