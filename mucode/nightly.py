"""The nightly progress report: did this iteration's generator beat the previous one and the base model?

`mucode-iteration` evaluates, after each iteration, three generators on a fixed subset
(`nightly` in the config) and hands the evaluations' metrics here. This module builds the
history entry (BoN@t with 95% intervals per method and dataset, the verifiers' held-out AUC,
example counts, wall time per stage), renders it as Markdown, appends it to
ROOT/nightly.jsonl and plots the trend to ROOT/nightly.png. It runs no stage and talks to no
Prefect server; every number comes from the artifacts' manifests and ROOT/timings.jsonl.
"""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path
from typing import Any

from mucode.artifacts import append_json_line, read_json_lines, root_url

HISTORY_FILE = "nightly.jsonl"
PLOT_FILE = "nightly.png"


def bon_table(metrics: dict[str, Any], turns: int) -> dict[str, list[float | None]]:
    """bon@t → [value, ci_low, ci_high] for t = 1..turns, from an evaluation's manifest metrics."""
    def number(name: str) -> float | None:
        value = metrics.get(name)
        return float(value) if isinstance(value, (int, float)) and not math.isnan(value) else None

    return {f"bon@{t}": [number(f"bon@{t}"), number(f"bon@{t}.ci_low"), number(f"bon@{t}.ci_high")]
            for t in range(1, turns + 1)}


def nightly_entry(experiment: str, iteration: int, turns: int, evaluations: dict[str, dict[str, dict[str, Any]]],
                  auc: dict[str, float | None], examples: dict[str, int | None],
                  walls: dict[str, float]) -> dict[str, Any]:
    """One line of the history. `evaluations`: dataset → method → manifest metrics."""
    return {
        "experiment": experiment,
        "iteration": iteration,
        "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "bon": {dataset: {method: bon_table(metrics, turns) for method, metrics in methods.items()}
                for dataset, methods in evaluations.items()},
        "problems": {dataset: max(int(metrics.get("problems", 0)) for metrics in methods.values())
                     for dataset, methods in evaluations.items()},
        "verifier_auc": auc,
        "examples": examples,
        "wall_s": walls,
    }


def _cell(triple: list[float | None]) -> str:
    value, low, high = triple
    if value is None:
        return "–"
    interval = f" [{100 * low:.1f}, {100 * high:.1f}]" if low is not None and high is not None else ""
    return f"{100 * value:.1f}{interval}"


def nightly_markdown(entry: dict[str, Any]) -> str:
    """The run artifact: this iteration vs the previous one vs the base model, then costs."""
    lines = [f"# {entry['experiment']}: iteration {entry['iteration']}", ""]
    for dataset, methods in entry["bon"].items():
        turns = list(next(iter(methods.values())))
        lines += [f"## {dataset} ({entry['problems'][dataset]} problems), BoN@t % [95% interval]", "",
                  "| generator | " + " | ".join(turns) + " |", "|---|" + "---|" * len(turns)]
        lines += [f"| {method} | " + " | ".join(_cell(table[t]) for t in turns) + " |"
                  for method, table in methods.items()]
        lines.append("")
    lines += ["## Verifier held-out AUC", "", "| verifier | AUC |", "|---|---|"]
    lines += [f"| {name} | {'–' if value is None else f'{value:.3f}'} |" for name, value in entry["verifier_auc"].items()]
    lines += ["", "## Examples", "", "| what | count |", "|---|---|"]
    lines += [f"| {name} | {'–' if value is None else value} |" for name, value in entry["examples"].items()]
    lines += ["", "## Wall time per stage (s; cached stages: when they were computed)", "", "| stage | s |", "|---|---|"]
    lines += [f"| {name} | {seconds:.1f} |" for name, seconds in entry["wall_s"].items()]
    return "\n".join(lines) + "\n"


def append_history(root: str, entry: dict[str, Any]) -> None:
    """Add this iteration's entry to ROOT/nightly.jsonl (a local directory or an object store)."""
    append_json_line(root_url(root, HISTORY_FILE), entry)


def read_history(root: str) -> list[dict[str, Any]]:
    """Every entry of ROOT/nightly.jsonl, oldest first (lines cut short by a crash are skipped)."""
    return read_json_lines(root_url(root, HISTORY_FILE))


def plot_history(history: list[dict[str, Any]], path: Path, this_label: str = "this") -> Path:
    """BoN@T of each iteration's generator (its latest entry) against the base model, per dataset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    latest = {entry["iteration"]: entry for entry in history}  # a re-run iteration: its newest numbers
    datasets = sorted({dataset for entry in latest.values() for dataset in entry["bon"]})
    figure, axes = plt.subplots(1, max(len(datasets), 1), figsize=(5 * max(len(datasets), 1), 3.5), squeeze=False)
    for axis, dataset in zip(axes[0], datasets):
        for label, colour in ((this_label, "tab:blue"), ("base", "tab:grey")):
            points = []
            for iteration, entry in sorted(latest.items()):
                table = entry["bon"].get(dataset, {}).get(label)
                if table:
                    value, low, high = table[list(table)[-1]]
                    if value is not None:
                        points.append((iteration, 100 * value, 100 * (low if low is not None else value),
                                       100 * (high if high is not None else value)))
            if points:
                xs, ys, lows, highs = zip(*points)
                axis.plot(xs, ys, marker="o", color=colour, label=label)
                axis.fill_between(xs, lows, highs, color=colour, alpha=0.15)
        axis.set_title(dataset)
        axis.set_xlabel("iteration")
        axis.set_ylabel("BoN@T (%)")
        axis.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
