"""The comparison of training policies: paired differences, stage costs, the compare report.

`mucode-compare` evaluates the base model and every arm (µCode, multi-turn RFT,
Multi-STaR², ...) on the same problems, so differences between methods are *paired*: the
interval of "µCode minus RFT" comes from resampling problems once for both, which is
narrower than two separate intervals would suggest. This module turns evaluation rows and
the stage timings into those numbers, a plot of the selection ablation, and `compare.md`.
It runs no model and computes no single-evaluation metric (`mucode.eval_summary` does).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import yaml
from matplotlib.figure import Figure

from mucode import metrics
from mucode.evaluations import EvaluationSummary
from mucode.report import dataset_title, markdown_table, percent, set_percent_ylim, table_records
from mucode.eval_summary import search_outcomes

COMPARE_FILE, ABLATION_FILE, ARM_CURVES_FILE = "compare.md", "selection_ablation.png", "arms_bon_at_t.png"
METHOD_TITLES = {
    "base": "Multi-turn Instruct (base)",
    "mucode": "µCode",
    "rft": "Multi-turn RFT (Multi-STaR)",
    "oracle": "Multi-STaR²",
    "mucode-r": "µCode-R",
    "mucode-solved": "µCode, solved problems only",
    "single-turn-rft": "Single-turn RFT",
    "single-turn-base": "Single-turn Instruct (base)",
}
RULE_ORDER = ("random", "lv", "pt", "pt+lv")
ITERATION_MARK = "@iter"
SOLVED_SHARE = 0.5  # a problem counts as solved by a method when its BoN@T over searches is at least this


def iteration_label(arm: str, iteration: int, iterations: int) -> str:
    """The method name of an arm's generator after `iteration` of `iterations`: the arm itself
    for the last one, `<arm>@iter<i>` for an earlier one (Table 1 reports Iter 1 and Iter 2)."""
    return arm if iteration == iterations else f"{arm}{ITERATION_MARK}{iteration}"


def method_title(method: str, iterations: int = 1) -> str:
    """Display name: `mucode@iter1` -> "µCode (Iter 1)"; an arm's last iteration says its number when M > 1."""
    arm, _, iteration = method.partition(ITERATION_MARK)
    title = METHOD_TITLES.get(arm, arm)
    if iteration:
        return f"{title} (Iter {iteration})"
    is_arm = arm in METHOD_TITLES and arm not in ("base", "single-turn-base")
    return f"{title} (Iter {iterations})" if iterations > 1 and is_arm else title


def titled(summaries: Sequence[EvaluationSummary], iterations: int = 1,
           untrained: Collection[str] = ()) -> list[EvaluationSummary]:
    """The summaries with their methods' display names (for tables and legends).

    A method in `untrained` (its arm had no training data) says so in its name, and an
    evaluation that reuses another's rows names that method (`same_as`), so a row never
    passes off the base model's numbers as a trained arm's.
    """
    result = []
    for summary in summaries:
        name = method_title(summary.method, iterations) + (" — no training data" if summary.method in untrained else "")
        details = dict(summary.details)
        if details.get("same_as"):
            details["same_as"] = method_title(details["same_as"], iterations)
        result.append(replace(summary, method=name, details=details))
    return result


class CompareError(ValueError):
    """The evaluations cannot be compared as asked; the message is one line."""


@dataclass(frozen=True)
class Difference:
    """Paired difference in BoN@T of `method` minus `against` on the problems both solved for."""

    method: str
    against: str
    dataset: str
    value: float
    low: float
    high: float
    problems: int
    only_method: int = 0  # problems `method` solves and `against` does not
    only_against: int = 0  # and the reverse
    n: int = 0  # candidates per turn of both evaluations

    @property
    def verdict(self) -> str:
        if self.low > 0:
            return "higher"
        if self.high < 0:
            return "lower"
        return "not distinguishable"


def per_problem_bon(rows: pl.DataFrame, turns: int) -> dict[str, float]:
    """task_id -> BoN@turns averaged over the problem's searches."""
    by_problem: dict[str, float] = {}
    for task_id, searches in search_outcomes(rows).items():
        shortest = min(len(public) for public, _ in searches)
        if shortest < turns:
            raise CompareError(f"{task_id} has {shortest} turns, fewer than the {turns} compared")
        by_problem[task_id] = metrics.mean([float(metrics.bon_success(public, private, turns))
                                            for public, private in searches])
    return by_problem


def paired_difference(a: Mapping[str, float], b: Mapping[str, float], *, resamples: int = 1000,
                      seed: int = 0, confidence: float = 0.95) -> tuple[float, float, float, int]:
    """(mean of a - b, interval low, high, problems) over the problems both have; percentile bootstrap."""
    common = sorted(set(a) & set(b))
    if not common:
        raise CompareError("the two evaluations share no problem: evaluate both on the same problems")
    differences = np.array([a[task_id] - b[task_id] for task_id in common])
    low, high = metrics.bootstrap_ci(differences, n_resamples=resamples, seed=seed, confidence=confidence)
    return float(differences.mean()), low, high, len(common)


def headline_differences(summaries: Sequence[EvaluationSummary], rows: Mapping[str, pl.DataFrame], *,
                         method: str, n: int, selection: str, resamples: int = 1000,
                         seed: int = 0) -> list[Difference]:
    """`method` at (n, selection) minus every other method at the same (n, selection), per dataset.

    `rows` maps an evaluation's label to its rows. At N=1 the rule is moot and ignored. A
    method whose evaluation reuses another's rows (`same_as`: an untrained arm) is left out:
    its difference is that of the method it copies.
    """
    def pick(candidate: str, dataset: str) -> EvaluationSummary | None:
        return next((s for s in summaries if (s.method, s.dataset, s.n) == (candidate, dataset, n)
                     and (n == 1 or s.selection == selection) and s.label in rows), None)

    differences = []
    for dataset in dict.fromkeys(summary.dataset for summary in summaries):
        ours = pick(method, dataset)
        if ours is None:
            continue
        for other in dict.fromkeys(summary.method for summary in summaries):
            theirs = pick(other, dataset) if other != method else None
            if theirs is None or theirs.details.get("same_as"):
                continue
            a, b = per_problem_bon(rows[ours.label], ours.turns), per_problem_bon(rows[theirs.label], theirs.turns)
            value, low, high, count = paired_difference(a, b, resamples=resamples, seed=seed)
            only_a, only_b = discordant_counts(a, b)
            differences.append(Difference(method, other, dataset, value, low, high, count, only_a, only_b, n))
    return differences


def discordant_counts(a: Mapping[str, float], b: Mapping[str, float]) -> tuple[int, int]:
    """(problems solved by a and not b, by b and not a) over the shared problems (solved: BoN@T >= SOLVED_SHARE)."""
    common = set(a) & set(b)
    only_a = sum(1 for task in common if a[task] >= SOLVED_SHARE > b[task])
    only_b = sum(1 for task in common if b[task] >= SOLVED_SHARE > a[task])
    return only_a, only_b


def differences_table(differences: Sequence[Difference], iterations: int = 1) -> str:
    from mucode.power import min_resolvable_difference

    records = []
    for d in differences:
        discordance = (d.only_method + d.only_against) / d.problems
        resolvable = min_resolvable_difference(d.problems, discordance)
        records.append({
            "Dataset": dataset_title(d.dataset), "N": str(d.n),
            "Comparison": f"{method_title(d.method, iterations)} − {method_title(d.against, iterations)}",
            "Δ BoN@T (points)": f"{100 * d.value:+.1f}", "95% CI": f"[{100 * d.low:+.1f}, {100 * d.high:+.1f}]",
            "Problems": str(d.problems), "Only first / only second": f"{d.only_method} / {d.only_against}",
            "Resolvable Δ at this discordance": "none" if math.isinf(resolvable) else f"{100 * resolvable:.1f}",
            "Reading": d.verdict})
    return markdown_table(records)


def reuses_rows(details: Mapping[str, Any]) -> bool:
    """Whether an evaluation's rows are another's: an alias (`same_as`) or the first turns of a longer search."""
    return bool(details.get("same_as") or details.get("first_turns_of"))


def unique_solves(summaries: Sequence[EvaluationSummary], rows: Mapping[str, pl.DataFrame],
                  iterations: int = 1) -> list[dict[str, str]]:
    """Per dataset and N: how many problems each method solves, and how many of those no other method does.

    The methods are those evaluated alike at full T (each N with its one selection rule):
    the base model and each arm's last iteration, leaving out evaluations that reuse another's rows.
    """
    chosen = [s for s in summaries if s.label in rows and not reuses_rows(s.details) and ITERATION_MARK not in s.method]
    records = []
    groups = dict.fromkeys((s.dataset, s.n, s.selection, s.turns) for s in chosen)
    for dataset, n, selection, turns in groups:
        group = [s for s in chosen if (s.dataset, s.n, s.selection, s.turns) == (dataset, n, selection, turns)]
        if len(group) < 2:
            continue
        solved = {s.method: {task for task, value in per_problem_bon(rows[s.label], turns).items()
                             if value >= SOLVED_SHARE} for s in group}
        for s in group:
            others = set().union(*(tasks for method, tasks in solved.items() if method != s.method))
            only = solved[s.method] - others
            problems = int(s.metrics.get("problems", 0)) or 1
            records.append({"Dataset": dataset_title(dataset), "N": str(n), "Selection": selection if n > 1 else "–",
                            "Method": method_title(s.method, iterations), "Solves": str(len(solved[s.method])),
                            "Solved by no other method": str(len(only)),
                            "% of problems": percent(len(only) / problems)})
    return records


def first_answers(summaries: Sequence[EvaluationSummary], rows: Mapping[str, pl.DataFrame],
                  iterations: int = 1) -> list[dict[str, str]]:
    """Per evaluation: its selected turn-1 answers' public and private pass rates, median length, docstrings.

    A fine-tune changes how a model answers as well as how often it is right: answers that
    shrink and drop the prompt's docstring show a style learned from the training targets.
    Evaluations that reuse another's rows are left out.
    """
    records = []
    for s in summaries:
        if s.label not in rows or reuses_rows(s.details):
            continue
        first = rows[s.label].filter(pl.col("turn") == 1)
        if first.height == 0:
            continue
        records.append({"Dataset": dataset_title(s.dataset), "N": str(s.n), "Selection": s.selection if s.n > 1 else "–",
                        "Method": method_title(s.method, iterations),
                        "Public pass (%)": percent(float(first["public_passed"].mean())),
                        "Private pass (%)": percent(float(first["private_passed"].mean())),
                        "Median answer (characters)": str(int(first["response"].str.len_chars().median())),
                        "Code with a docstring (%)": percent(float(first["code"].str.contains("\"\"\"|'''").mean()))})
    return sorted(records, key=lambda record: (record["Dataset"], int(record["N"]), record["Selection"]))


def rollout_outcomes(aggregated: pl.DataFrame, iteration: int = 1) -> dict[str, list[bool]]:
    """task_id -> whether each of its rollouts of `iteration` ended passing the oracle (its final turn).

    `aggregated`: an aggregate frame, or an execute frame (one iteration's rollouts, no `iteration` column).
    """
    from mucode.columns import require_columns

    require_columns(aggregated, ["task_id", "final", "oracle_passed"], CompareError, "the rollout frame",
                    "give the execute or aggregate artifact of a run (artifacts/execute/*.parquet)")
    finals = aggregated.filter(pl.col("final"))
    if "iteration" in aggregated.columns:
        finals = finals.filter(pl.col("iteration") == iteration)
    outcomes: dict[str, list[bool]] = {}
    for task_id, passed in finals.select("task_id", "oracle_passed").iter_rows():
        outcomes.setdefault(task_id, []).append(bool(passed))
    return outcomes


def power_section(outcomes: Mapping[str, Sequence[bool]], problem_counts: Mapping[str, int]) -> str:
    """What the evaluation sizes can resolve, given how often two runs of the base model disagree.

    The discordance is measured on the base rollouts (`mucode.power.sampling_discordance`):
    sampling noise alone, the least two methods trained from that model will disagree on.
    """
    from mucode.power import power_table, sampling_discordance

    if not any(len(runs) >= 2 for runs in outcomes.values()):
        return ("_(the base rollouts have one run per problem, so how often two runs disagree cannot be "
                "measured: set rollout.num_rollouts to 2 or more)_")
    problems, share = sampling_discordance(outcomes)
    runs = round(sum(len(runs) for runs in outcomes.values()) / len(outcomes))
    records = [{"Dataset": dataset_title(str(row["dataset"])), "Problems": str(row["problems"]),
                "Resolvable Δ at 95% (exact McNemar, points)": "none" if row["mcnemar_resolvable_points"] is None
                else f"{row['mcnemar_resolvable_points']:.1f}",
                "Δ found with 80% power (points)": f"{row['detectable_80pct_power_points']:.1f}"}
               for row in power_table(problem_counts, [share])]
    return "\n".join([
        f"Two independent runs of the base model disagree on **{share:.1%}** of problems: the mean over the "
        f"{problems} training problems of 2p(1 − p), estimated without bias from their ~{runs} base rollouts each "
        "(a rollout counts when its final turn passes the oracle). That is sampling noise alone, the least "
        "discordance two methods trained from this model show; at it, the evaluation sizes resolve:", "",
        markdown_table(records), "",
        "More discordance (methods that really differ) needs a larger difference; the differences table above "
        "gives the threshold at each pair's observed discordance."])


def training_table(training: Sequence[Mapping[str, Any]], iterations: int = 1) -> str:
    """One row per arm and iteration: rollout pass rate, SFT examples, generator, verifier AUC."""
    records = []
    for entry in training:
        auc = entry.get("heldout_auc")
        records.append({
            "Arm": method_title(str(entry["arm"])), "Iteration": str(entry["iteration"]),
            "Rollout final-turn pass rate (%)": percent(entry["rollout_pass_rate"])
            if entry.get("rollout_pass_rate") is not None else "–",
            "SFT examples": str(entry["examples"]), "SFT problems": str(entry.get("problems", "–")),
            "Target pass rate (%)": percent(entry["target_pass_rate"]) if entry.get("target_pass_rate") is not None
            else "–",
            "Generator": entry["generator_state"],
            "Verifier held-out AUC": "–" if auc is None or auc != auc else f"{auc:.3f}"})
    return markdown_table(records)


def untrained_methods(training: Sequence[Mapping[str, Any]], iterations: int) -> set[str]:
    """The method labels whose iteration had no SFT example."""
    return {iteration_label(str(entry["arm"]), int(entry["iteration"]), iterations) for entry in training
            if int(entry["examples"]) == 0}


def stage_cost_table(timings: Sequence[Mapping[str, Any]]) -> str:
    """Per stage: how many runs were computed, their wall time (with that of their unfinished
    earlier attempts, also shown apart) and the highest peak RSS (from ROOT/timings.jsonl).

    A run's time is its finishing attempt's plus its unfinished ones'. Runs recorded before
    peak RSS was measured count for time only; "n/a" when none has one.
    """
    walls: dict[str, list[float]] = {}
    unfinished: dict[str, float] = {}
    peaks: dict[str, list[float]] = {}
    for record in timings:
        stage = str(record.get("stage", "?"))
        lost = float(record.get("unfinished_s", 0.0))
        walls.setdefault(stage, []).append(float(record.get("wall_s", 0.0)) + lost)
        unfinished[stage] = unfinished.get(stage, 0.0) + lost
        if record.get("peak_rss_gib") is not None:
            peaks.setdefault(stage, []).append(float(record["peak_rss_gib"]))

    def peak_cell(values: list[float]) -> str:
        return f"{max(values):.2f}" if values else "n/a"

    records = [{"Stage": stage, "Runs computed": str(len(times)), "Wall time (s)": f"{sum(times):.0f}",
                "Of which unfinished attempts (s)": f"{unfinished[stage]:.0f}", "Longest run (s)": f"{max(times):.0f}",
                "Peak RSS (GiB)": peak_cell(peaks.get(stage, []))}
               for stage, times in walls.items()]
    if records:
        total = sum(sum(times) for times in walls.values())
        records.append({"Stage": "**all**", "Runs computed": str(len(timings)), "Wall time (s)": f"**{total:.0f}**",
                        "Of which unfinished attempts (s)": f"{sum(unfinished.values()):.0f}", "Longest run (s)": "",
                        "Peak RSS (GiB)": peak_cell([p for v in peaks.values() for p in v])})
    return markdown_table(records)


def phase_table(phases: Mapping[str, float]) -> str:
    return markdown_table([{"Phase": name, "Wall time (s)": f"{seconds:.0f}"} for name, seconds in phases.items()])


def plot_selection_ablation(summaries: Sequence[EvaluationSummary], method: str, n: int, path: str | Path) -> Path | None:
    """Bars of BoN@T per selection rule for `method` at N=n, one group per dataset; None if < 2 rules."""
    chosen = [s for s in summaries if s.method == method and s.n == n]
    selections = _rules(chosen)
    if len(selections) < 2:
        return None
    datasets = list(dict.fromkeys(s.dataset for s in chosen))
    figure = Figure(figsize=(1.6 + 1.4 * len(selections) * len(datasets), 3.8), layout="constrained")
    axis = figure.subplots()
    width = 0.8 / len(selections)
    for position, selection in enumerate(selections):
        values, errors = [], [[], []]
        for dataset in datasets:
            summary = next((s for s in chosen if (s.dataset, s.selection) == (dataset, selection)), None)
            value = summary.metrics.get(summary.headline, float("nan")) if summary else float("nan")
            low, high = (summary.interval(summary.headline) if summary else None) or (value, value)
            values.append(100 * value)
            errors[0].append(100 * (value - low))
            errors[1].append(100 * (high - value))
        offsets = [index + (position - (len(selections) - 1) / 2) * width for index in range(len(datasets))]
        axis.bar(offsets, values, width, yerr=errors, capsize=3, label=selection)
    axis.set_xticks(range(len(datasets)), [dataset_title(d) for d in datasets])
    axis.set_ylabel("BoN@T (%)")
    set_percent_ylim(axis)
    axis.set_title(f"{method_title(method)}, N={n}: BoN selection rule")
    axis.legend(fontsize="small")
    figure.savefig(path, dpi=110)
    return Path(path)


def _rules(summaries: Sequence[EvaluationSummary]) -> list[str]:
    found = dict.fromkeys(s.selection for s in summaries)
    return sorted(found, key=lambda rule: RULE_ORDER.index(rule) if rule in RULE_ORDER else len(RULE_ORDER))


def ablation_table(summaries: Sequence[EvaluationSummary], method: str, n: int) -> str:
    chosen = [s for s in summaries if s.method == method and s.n == n]
    datasets = list(dict.fromkeys(s.dataset for s in chosen))
    records = []
    for selection in _rules(chosen):
        record = {"Selection": selection}
        for dataset in datasets:
            summary = next((s for s in chosen if (s.dataset, s.selection) == (dataset, selection)), None)
            interval = summary.interval(summary.headline) if summary else None
            record[dataset_title(dataset)] = (percent(summary.metrics[summary.headline]) +
                                              (f" [{percent(interval[0])}, {percent(interval[1])}]" if interval else "")
                                              if summary else "–")
        records.append(record)
    return markdown_table(records)


def compare_markdown(*, config: Mapping[str, Any], summaries: Sequence[EvaluationSummary],
                     differences: Sequence[Difference], timings: Sequence[Mapping[str, Any]],
                     phases: Mapping[str, float], reference_method: str, n: int, selection: str,
                     has_ablation_plot: bool, curves_file: str, training: Sequence[Mapping[str, Any]] = (),
                     only_solved: Sequence[Mapping[str, str]] = (), power: str = "",
                     answers: Sequence[Mapping[str, str]] = ()) -> str:
    """The compare report: training data, Table 1, paired differences, power, unique solves, first answers,
    curves, ablation, costs, configuration. `power`: `power_section`'s text (left out when empty);
    `answers`: `first_answers`' records."""
    iterations = int(config.get("iterations", 1))
    untrained = untrained_methods(training, iterations)
    headline = [s for s in summaries if s.n in (1, n) and (s.n == 1 or s.selection == selection)]
    parts = [
        f"# µCode against its baselines: `{config.get('name', '')}`", "",
        "Every arm is trained from the same base rollouts (computed once, cached) and evaluated on the "
        "same problems. Numbers are **BoN@T** in percent (T turns; the submitted answer is the first turn "
        "whose selected code passes the public tests, and it counts if it also passes the private tests), "
        "mean over problems and searches, with a 95% percentile-bootstrap interval over problems.", "",
        "## Training data per arm", "",
        "Rollout pass rate: the share of rollouts whose final turn passes the oracle (the aggregate of that "
        "iteration). An arm with no SFT example keeps its previous generator (the base model at iteration 1); "
        "its Table 1 rows say so.", "",
        training_table(training, iterations) if training else "_(no training records were given)_", "",
        "## Table 1 layout", "",
        "A cell `= X` reuses the evaluation of method X (the same generator and verifier): it is not a "
        "separate result.", "",
        markdown_table(table_records(titled(headline, iterations, untrained))), "",
        f"## Paired differences ({method_title(reference_method, iterations)} minus each other method, at N=1 "
        f"and at N={n} with {selection})", "",
        "Problems are resampled jointly for both methods (paired bootstrap). *higher* / *lower*: the whole "
        "interval lies above / below zero; otherwise the difference is not distinguishable from noise at "
        "this number of problems. *Only first / only second*: problems one method solves and the other does "
        "not; from them, the smallest difference an exact McNemar test resolves at 95% (`mucode.power`; "
        "none: too few discordant problems for any split to be significant). A method that reuses another's "
        "evaluation (no training data) is not listed: its difference is that method's.", "",
        differences_table(differences, iterations) if differences else "_(no pair of methods was evaluated alike)_",
        "",
        *(["## Power", "", power, ""] if power else []),
        "## Problems only one method solves", "",
        f"Solved: BoN@T of the problem's searches at least {SOLVED_SHARE:.0%}. Among the methods evaluated alike "
        "(same N and selection rule; the base model and each arm's last iteration).", "",
        markdown_table(list(only_solved)) if only_solved else "_(fewer than two methods evaluated alike)_", "",
        "## First-turn answers", "",
        "The selected answer of every search at turn 1: how often it passes the public and the private tests, "
        "its median length, and how often its code carries a docstring (the prompt's, usually, restated). A "
        "fine-tune that changes these has learned the training targets' style, not only their correctness.", "",
        markdown_table(list(answers)) if answers else "_(no evaluation rows)_", "",
        "## BoN@t per turn", "",
        f"![BoN@t per turn, every method]({curves_file})" if curves_file else "_(no evaluation at T turns yet)_", "",
        f"## BoN selection ablation ({method_title(reference_method, iterations)}, N={n})", "",
        ablation_table(summaries, reference_method, n), "",
        f"![selection ablation]({ABLATION_FILE})" if has_ablation_plot else "_(fewer than two selection rules)_", "",
        "## Cost", "",
        "Wall time of every stage run that was computed (cache hits cost nothing and are not listed), "
        "from `timings.jsonl` in the experiment directory:", "", stage_cost_table(timings), "",
        "Wall clock of this flow run, by phase (a resumed run shows cached phases as seconds):", "",
        phase_table(phases), "",
        "## Configuration", "", "```yaml", yaml.safe_dump(dict(config), sort_keys=False).rstrip(), "```", "",
    ]
    return "\n".join(parts)
