"""The metrics of one evaluation (one N, one selection rule) from its search rows.

`summarize` returns metric name -> value, with bootstrap 95% intervals over problems as
`<metric>.ci_low` / `<metric>.ci_high` (t = 1..T, k = 1, 2, 5, 10, ... up to S):

  bon@t               the first public pass within t turns also passes the private tests
  public@t            some selected code within t turns passes the public tests
  solved@t            some selected code within t turns passes the private tests
  pass@k              multi-turn pass@k over the S searches (solved within T turns)
  single_turn_pass@1  the turn-1 selected code passes the private tests
  problems, searches, n, turns   sizes (no interval)

`search_outcomes` is the per-problem, per-search view the comparisons use too. This module
does not run searches and does not render reports (that is `mucode.report`).
"""

from __future__ import annotations

from typing import Any

import polars as pl

from mucode import metrics
from mucode.selection import EvaluationError

PASS_AT_K_VALUES: tuple[int, ...] = (1, 2, 5, 10, 20, 50, 100)


def search_outcomes(rows: pl.DataFrame) -> dict[str, list[tuple[list[bool], list[bool]]]]:
    """Per problem, per search: (public outcomes, private outcomes) by turn, turn 1 first."""
    ordered = rows.sort("task_id", "search_id", "turn")
    grouped = ordered.group_by("task_id", "search_id", maintain_order=True).agg(
        pl.col("turn"), pl.col("public_passed"), pl.col("private_passed")
    )
    outcomes: dict[str, list[tuple[list[bool], list[bool]]]] = {}
    for task_id, search_id, turn_list, public, private in grouped.iter_rows():
        if turn_list != list(range(1, len(turn_list) + 1)):
            raise EvaluationError(f"{task_id} search {search_id} has turns {turn_list}: every search needs turns 1..T")
        outcomes.setdefault(task_id, []).append((public, private))
    return outcomes


def _single_value(rows: pl.DataFrame, column: str) -> Any:
    values = rows[column].unique().to_list()
    if len(values) != 1:
        raise EvaluationError(f"rows mix {column} values {sorted(values)}: summarize one {column} at a time")
    return values[0]


def _with_interval(summary: dict[str, float], name: str, per_problem: list[float], seed: int) -> None:
    summary[name] = metrics.mean(per_problem)
    summary[f"{name}.ci_low"], summary[f"{name}.ci_high"] = metrics.bootstrap_ci(per_problem, seed=seed)


def summarize(rows: pl.DataFrame, *, seed: int = 0) -> dict[str, float]:
    """Metric name -> value for one evaluation (one N and one selection rule)."""
    if rows.height == 0:
        raise EvaluationError("no evaluation rows to summarize: the search produced nothing")
    n = _single_value(rows, "n")
    _single_value(rows, "selection")
    outcomes = search_outcomes(rows)
    searches = {len(per_problem) for per_problem in outcomes.values()}
    turns = {len(public) for per_problem in outcomes.values() for public, _ in per_problem}
    if len(searches) != 1 or len(turns) != 1:
        raise EvaluationError(f"problems differ in searches {sorted(searches)} or turns {sorted(turns)}: rerun them")
    (num_searches,), (num_turns,) = searches, turns
    summary: dict[str, float] = {"problems": float(len(outcomes)), "searches": float(num_searches),
                                 "n": float(n), "turns": float(num_turns)}
    problem_searches = list(outcomes.values())

    def rate(success: Any) -> list[float]:
        return [metrics.mean([float(success(public, private)) for public, private in per_problem])
                for per_problem in problem_searches]

    for t in range(1, num_turns + 1):
        _with_interval(summary, f"bon@{t}", rate(lambda pub, priv: metrics.bon_success(pub, priv, t)), seed)
    for t in range(1, num_turns + 1):
        _with_interval(summary, f"public@{t}", rate(lambda pub, priv: metrics.public_success(pub, t)), seed)
    for t in range(1, num_turns + 1):
        _with_interval(summary, f"solved@{t}", rate(lambda pub, priv: metrics.solved_within(priv, t)), seed)
    correct = [sum(metrics.solved_within(private, num_turns) for _, private in per_problem)
               for per_problem in problem_searches]
    for k in (k for k in PASS_AT_K_VALUES if k <= num_searches):
        _with_interval(summary, f"pass@{k}", [metrics.pass_at_k(num_searches, c, k) for c in correct], seed)
    _with_interval(summary, "single_turn_pass@1", rate(lambda pub, priv: bool(priv[0])), seed)
    return summary
