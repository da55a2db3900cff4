"""The evaluation report: a Table-1-style Markdown report with matplotlib PNGs, rebuilt from
the evaluate artifacts of a run (their manifests, read by `mucode.evaluations`).

`build_report(RUN_DIR)` writes `RUN_DIR/report.md`, `RUN_DIR/bon_at_t.png` and, when some
method was evaluated at several N, `RUN_DIR/scaling.png`.

The headline number of every evaluation is BoN@T (T = its number of turns), in percent,
with its 95% bootstrap interval over problems. This module does not run models or compute
metrics from rows (that is `mucode.eval_summary`); publishing the report to Prefect is
`mucode.publish`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from mucode.artifacts import write_atomically
from mucode.evaluations import EvaluationSummary, ReportError, load_evaluations

REPORT_FILE, CURVES_FILE, SCALING_FILE = "report.md", "bon_at_t.png", "scaling.png"
DATASET_TITLES = {
    "humaneval": "HumanEval",
    "mbpp": "MBPP",
    "humaneval-plus": "HumanEval+",
    "mbpp-plus": "MBPP+",
    "codecontests": "CodeContests",
}
SIZE_METRICS = ("problems", "searches", "n", "turns")
MARKERS = ("o", "s", "^", "D", "v", "P", "X")


# --- the Table 1 layout -----------------------------------------------------------------------


def percent(value: float) -> str:
    return f"{100 * value:.1f}"


def headline_cell(summary: EvaluationSummary) -> str:
    """BoN@T [interval]; `= X` for an evaluation that reuses method X's rows (the same generator)."""
    if summary.details.get("same_as"):
        return f"= {summary.details['same_as']}"
    value = summary.metrics.get(summary.headline)
    if value is None:
        return "–"
    interval = summary.interval(summary.headline)
    suffix = f" [{percent(interval[0])}, {percent(interval[1])}]" if interval else ""
    return percent(value) + suffix


def dataset_title(dataset: str) -> str:
    return DATASET_TITLES.get(dataset, dataset)


def _row_key(summary: EvaluationSummary) -> tuple[str, int, str, int]:
    # With one candidate every selection rule picks it: N=1 rows ignore the rule.
    return summary.method, summary.n, "" if summary.n == 1 else summary.selection, summary.turns


def table_records(summaries: Sequence[EvaluationSummary]) -> list[dict[str, str]]:
    """Table 1 as records: one per (method, N, selection, T), one column per dataset.

    Methods keep their order of first appearance; within a method rows go by N.
    """
    datasets = list(dict.fromkeys(summary.dataset for summary in summaries))
    methods = list(dict.fromkeys(summary.method for summary in summaries))
    cells: dict[tuple[str, int, str, int], dict[str, str]] = {}
    for summary in summaries:
        cells.setdefault(_row_key(summary), {}).setdefault(summary.dataset, headline_cell(summary))
    records: list[dict[str, str]] = []
    for method in methods:
        keys = sorted((key for key in cells if key[0] == method), key=lambda key: (key[1], key[2], key[3]))
        for position, (_, n, selection, turns) in enumerate(keys):
            name = method if n == 1 else f"{'+ BoN' if position else method + ' + BoN'} ({selection})"
            record = {"Method": name, "N": str(n), "T": str(turns)}
            for dataset in datasets:
                record[dataset_title(dataset)] = cells[(method, n, selection, turns)].get(dataset, "–")
            records.append(record)
    return records


def markdown_table(records: Sequence[dict[str, str]]) -> str:
    if not records:
        return "_(no rows)_"
    header = list(records[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(record.get(column, "") for column in header) + " |" for record in records]
    return "\n".join(lines)


def metrics_table(summary: EvaluationSummary) -> str:
    """Every metric of one evaluation in percent, with its interval."""
    records = []
    for name, value in summary.metrics.items():
        if name in SIZE_METRICS or ".ci_" in name:
            continue
        interval = summary.interval(name)
        records.append({"metric": name, "value (%)": percent(value),
                        "95% CI": f"[{percent(interval[0])}, {percent(interval[1])}]" if interval else "–"})
    return markdown_table(records)


# --- plots ---------------------------------------------------------------------------------------


def _dataset_axes(figure: Figure, datasets: list[str]) -> dict[str, Any]:
    axes = figure.subplots(1, len(datasets), squeeze=False)[0]
    for axis, dataset in zip(axes, datasets):
        axis.set_title(dataset_title(dataset))
        axis.grid(alpha=0.3)
    return dict(zip(datasets, axes))


def _curve(summary: EvaluationSummary, names: list[str]) -> tuple[list[float], list[float], list[float]]:
    values = [100 * summary.metrics.get(name, float("nan")) for name in names]
    intervals = [summary.interval(name) or (float("nan"), float("nan")) for name in names]
    return values, [100 * low for low, _ in intervals], [100 * high for _, high in intervals]


def percent_axis_top(values: Sequence[float]) -> float:
    """Top of a percent axis: the smallest multiple of 10 at least 10 above the highest value,
    at most 100, so low results such as a base model's few percent stay readable."""
    highest = max((value for value in values if math.isfinite(value)), default=100.0)
    return float(min(100, 10 * math.ceil((highest + 10) / 10)))


def set_percent_ylim(axis: Any) -> None:
    """Fit a percent axis to what is drawn on it (lines, intervals, bars), with a 3% margin
    at each end so markers at 0 or at the top are not cut by the frame."""
    top = percent_axis_top([axis.dataLim.y1])
    axis.set_ylim(-0.03 * top, 1.03 * top)


def plot_turn_curves(summaries: Sequence[EvaluationSummary], path: str | Path) -> Path:
    """BoN@t against the turn budget t, one line per evaluation, shaded 95% intervals."""
    datasets = list(dict.fromkeys(summary.dataset for summary in summaries))
    figure = Figure(figsize=(5.0 * len(datasets), 4.0), layout="constrained")
    axes = _dataset_axes(figure, datasets)
    for position, summary in enumerate(summaries):
        turns = list(range(1, summary.turns + 1))
        values, lows, highs = _curve(summary, [f"bon@{t}" for t in turns])
        axis = axes[summary.dataset]
        # Distinct markers keep lines that coincide (same values) visible.
        (line,) = axis.plot(turns, values, marker=MARKERS[position % len(MARKERS)], label=summary.title())
        axis.fill_between(turns, lows, highs, color=line.get_color(), alpha=0.15)
    for axis in axes.values():
        set_percent_ylim(axis)
        axis.set_xlabel("turn budget t")
        axis.set_ylabel("BoN@t (%)")
        axis.xaxis.get_major_locator().set_params(integer=True)
        axis.legend(fontsize="small")
    figure.savefig(path, dpi=110)
    return Path(path)


def scaling_groups(summaries: Sequence[EvaluationSummary]) -> dict[tuple[str, str, str, int], list[EvaluationSummary]]:
    """Evaluations of one (method, dataset, selection, T) at two or more N, sorted by N.

    An N=1 evaluation joins every selection of its method: with one candidate the rule is moot.
    """
    groups: dict[tuple[str, str, str, int], dict[int, EvaluationSummary]] = {}
    for summary in (summary for summary in summaries if summary.n > 1):
        key = (summary.method, summary.dataset, summary.selection, summary.turns)
        groups.setdefault(key, {}).setdefault(summary.n, summary)
    for summary in (summary for summary in summaries if summary.n == 1):
        joined = [key for key in groups if (key[0], key[1], key[3]) == (summary.method, summary.dataset, summary.turns)]
        for key in joined:
            groups[key].setdefault(1, summary)
    return {key: [by_n[n] for n in sorted(by_n)] for key, by_n in groups.items() if len(by_n) >= 2}


def plot_scaling(summaries: Sequence[EvaluationSummary], path: str | Path) -> Path | None:
    """BoN@T against N (log scale) per method and selection; None when nothing scales."""
    groups = scaling_groups(summaries)
    if not groups:
        return None
    datasets = list(dict.fromkeys(key[1] for key in groups))
    figure = Figure(figsize=(5.0 * len(datasets), 4.0), layout="constrained")
    axes = _dataset_axes(figure, datasets)
    ticks: dict[str, set[int]] = {dataset: set() for dataset in datasets}
    for position, ((method, dataset, selection, turns), group) in enumerate(groups.items()):
        ns = [summary.n for summary in group]
        ticks[dataset].update(ns)
        points = [_curve(summary, [summary.headline]) for summary in group]
        values = [value[0] for value, _, _ in points]
        errors = [[value[0] - low[0] for value, low, _ in points], [high[0] - value[0] for value, _, high in points]]
        # A small sideways shift per line keeps overlapping error bars apart on the log axis.
        shifted = [n * 2 ** (0.04 * (position - (len(groups) - 1) / 2)) for n in ns]
        axes[dataset].errorbar(shifted, values, yerr=errors, marker=MARKERS[position % len(MARKERS)], capsize=3,
                               label=f"{method} ({selection}, T={turns})")
    for dataset, axis in axes.items():
        axis.set_xscale("log", base=2)
        axis.set_xticks(sorted(ticks[dataset]), [str(n) for n in sorted(ticks[dataset])])
        axis.minorticks_off()
        set_percent_ylim(axis)
        axis.set_xlabel("candidates per turn N")
        axis.set_ylabel("BoN@T (%)")
        axis.legend(fontsize="small")
    figure.savefig(path, dpi=110)
    return Path(path)


# --- the report ------------------------------------------------------------------------------------


def _evaluation_section(summary: EvaluationSummary) -> str:
    sizes = ", ".join(f"{name} {int(summary.metrics[name])}" for name in SIZE_METRICS if name in summary.metrics)
    details = ", ".join(f"{key} `{value}`" for key, value in summary.details.items())
    lines = [f"### `{summary.label}`: {summary.title()} on {dataset_title(summary.dataset)}", "", sizes]
    if details:
        lines += ["", details]
    return "\n".join([*lines, "", metrics_table(summary), ""])


def report_markdown(summaries: Sequence[EvaluationSummary], source: str, has_scaling: bool) -> str:
    parts = [
        "# µCode evaluation report", "",
        f"Built from {len(summaries)} evaluation(s) under `{source}`.", "",
        "Headline: **BoN@T** in percent (T = the evaluation's turns). In each search the submitted answer "
        "is the first turn whose selected code passes the public tests; it counts if it also passes the "
        "private tests; no public pass within T turns is a failure. Mean over problems and searches, "
        "[95% bootstrap interval over problems].", "",
        "## Table 1 layout", "", markdown_table(table_records(summaries)), "",
        "## BoN@t per turn", "", f"![BoN@t per turn]({CURVES_FILE})", "",
        "## Inference-time scaling over N", "",
        f"![BoN@T against N]({SCALING_FILE})" if has_scaling
        else "_No method was evaluated at several N: pass scaling N values to fill this plot._",
        "", "## Every evaluation", "",
        "bon@t: first public pass within t turns also passes privately; public@t / solved@t: some selected "
        "code within t turns passes the public / private tests; pass@k: multi-turn pass@k over the searches; "
        "single_turn_pass@1: the turn-1 selection passes privately.", "",
    ]
    parts += [_evaluation_section(summary) for summary in summaries]
    return "\n".join(parts)


def write_report(summaries: Sequence[EvaluationSummary], out_dir: str | Path, source: str = "") -> Path:
    """Write report.md and its PNGs into `out_dir`; returns the report path."""
    if not summaries:
        raise ReportError("no evaluations to report: run mucode evaluate first")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plot_turn_curves(summaries, out / CURVES_FILE)
    scaling = plot_scaling(summaries, out / SCALING_FILE)
    if scaling is None:
        # A stale plot from an earlier build would contradict the report.
        (out / SCALING_FILE).unlink(missing_ok=True)
    report = out / REPORT_FILE
    write_atomically(report, report_markdown(summaries, source or str(out), scaling is not None).encode())
    return report


def build_report(run_dir: str | Path) -> Path:
    """Rebuild RUN_DIR/report.md (and PNGs) from the evaluate artifacts stored under it."""
    summaries = load_evaluations(run_dir)
    if not summaries:
        raise ReportError(f"no evaluations under {run_dir}: expected the evaluate artifacts of mucode evaluate or a flow")
    return write_report(summaries, run_dir, source=str(run_dir))
