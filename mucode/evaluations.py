"""The evaluations of a run, read from the manifests of its evaluate artifacts.

An evaluation is one artifact of an `evaluate-<method>` stage (`tasks.evaluate.evaluate_stage`,
written by the flows and by `mucode evaluate` alike): its rows (schema
`mucode.best_of_n.ROW_SCHEMA`) and a manifest holding

    "evaluation"   {"method", "dataset", "n", "selection", "turns", "searches",
                    "details": {generator, verifier, seed, ...}}
    "metrics"      metric name -> value (`mucode.eval_summary.summarize`), intervals as
                   `<metric>.ci_low` / `<metric>.ci_high`

`read_evaluations` turns given artifacts into `EvaluationSummary`s (the report and compare
stages); `load_evaluations(RUN_DIR)` finds every evaluation stored under a run directory
(`mucode report`). This module renders nothing (that is `mucode.report`) and computes no
metrics.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


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


def evaluation_label(meta: dict) -> str:
    """A file-name-safe name of one evaluation: method, dataset, N and selection."""
    return f"{meta['method']}-{meta['dataset']}-n{meta['n']}-{meta['selection']}".replace("/", "_").replace("+", "_")


def evaluation_summary(manifest: dict) -> EvaluationSummary:
    """The summary held by one evaluate artifact's manifest."""
    try:
        meta = manifest["evaluation"]
        return EvaluationSummary(
            method=str(meta["method"]), dataset=str(meta["dataset"]), n=int(meta["n"]),
            selection=str(meta["selection"]), turns=int(meta["turns"]), searches=int(meta["searches"]),
            metrics={str(name): float(value) for name, value in manifest["metrics"].items()},
            details=dict(meta.get("details", {})), label=evaluation_label(meta),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        where = manifest.get("path", "an evaluate artifact") if isinstance(manifest, dict) else "an evaluate artifact"
        raise ReportError(f"{where}: malformed evaluation manifest ({error!r}); rerun its evaluation") from None


def read_evaluations(store, evaluations) -> list[EvaluationSummary]:
    """The summaries of the given evaluate artifacts, in their order."""
    return [evaluation_summary(store.manifest(evaluation)) for evaluation in evaluations]


def load_evaluations(run_dir: str | Path) -> list[EvaluationSummary]:
    """Every evaluation stored under `run_dir`, by label; of one label the newest only
    (a re-run with other settings replaces the earlier one, as in the report stage)."""
    from mucode.artifacts import ArtifactStore

    root = Path(run_dir)
    if not root.is_dir():
        raise ReportError(f"run directory {root} does not exist: pass the --out directory of mucode evaluate")
    newest = {}
    for manifest in ArtifactStore(root).list():  # oldest first
        if "evaluation" in manifest:
            summary = evaluation_summary(manifest)
            newest[summary.label] = summary
    return [newest[label] for label in sorted(newest)]
