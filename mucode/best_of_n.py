"""Multi-turn Best-of-N: the evaluation's search, its rows, and resuming it from finished turns.

`run_search` runs S independent searches per problem, T turns each, through the one
multi-turn loop (`mucode.search`). Every turn, all searches of all problems advance
together: `engine.generate(conversations, n=N)` calls of about `chunk_draws` draws each
(`mucode.engine_calls`; the progress bar counts the draws) and one sandbox batch
holding the public AND private tests of every candidate. The selected candidate's public
feedback is appended to its conversation; the private verdict is only recorded (for
metrics), never shown to the model. All T turns run (eval mode), unless
`stop_at_public_pass` ends a search at its submission (the first public pass).

Seeding: `random` selection and `pt` tie-breaks use an RNG seeded by (seed, task, search)
(`mucode.selection.search_rng`); candidate j of (task, search, turn) is sample j of its own
seed stream (the engine's contract in `mucode.engines.sampling`), so no two candidates
repeat a sample, whatever the chunking, and a resumed run (`replay_turns`) samples and
selects as an uninterrupted one. This module does not load models, write files or compute
metrics (`tasks.evaluate`, `mucode.eval_checkpoint`, `mucode.eval_summary`).
"""

from __future__ import annotations

import dataclasses
import functools
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import polars as pl

from mucode.engine_calls import Request, generate_in_calls
from mucode.environment import extend_conversation, initial_conversation, is_finished
from mucode.progress import stage_progress
from mucode.search import (PROBLEM_COLUMNS, Candidate, Choice, Search, judge_candidates, play_turn, require_problems,
                           run_turns)
from mucode.selection import EvaluationError, check_selection, replay_selection, search_rng, select_candidate

if TYPE_CHECKING:
    from mucode.engines.base import Engine
    from mucode.engines.sampling import SamplingParams


ROW_SCHEMA: dict[str, Any] = {
    "task_id": pl.String,
    "dataset": pl.String,
    "search_id": pl.Int64,
    "turn": pl.Int64,
    "n": pl.Int64,
    "selection": pl.String,
    "selected": pl.Int64,
    "response": pl.String,
    "code": pl.String,
    "public_passed": pl.Boolean,
    "private_passed": pl.Boolean,
    "verifier_score": pl.Float64,
    "num_public_passing_candidates": pl.Int64,
    "public_feedback": pl.String,  # what the model read after this turn (rebuilds conversations on resume)
}


class _DrawCounter:
    """Progress within one turn: draws generated so far and the turn's tokens/s."""

    def __init__(self, engine: Engine, advance: Callable[[int, str], None], before: int, label: str) -> None:
        self.engine, self.advance, self.done, self.label = engine, advance, before, label
        self.tokens_before, self.started = engine.tokens_generated, time.perf_counter()

    def __call__(self, draws: int) -> None:
        self.done += draws
        rate = (self.engine.tokens_generated - self.tokens_before) / max(time.perf_counter() - self.started, 1e-9)
        self.advance(self.done, f"{self.label}  {rate:.0f} tok/s")


def check_sizes(n: int, turns: int, searches: int) -> None:
    for name, value in (("n", n), ("turns", turns), ("searches", searches)):
        if value < 1:
            raise EvaluationError(f"--{name} must be >= 1, got {value}")


def generate_candidates(engine: Engine, live: Sequence[Search], turn: int, n: int, sampling: SamplingParams,
                        chunk_draws: int, on_chunk: Callable[[int], None] | None = None) -> list[list[str]]:
    """N replies for every live search, `[search][candidate]`, in engine calls of about
    `chunk_draws` draws that hold whole problems (`mucode.engine_calls`).

    Candidate j of a search at a turn is sample j of the seed stream
    `<task>/search-<s>/turn-<t>` (`mucode.engines.sampling`): S searches of one problem get
    different samples whatever the calls.
    """
    requests = [Request(search.conversation, f"{search.problem['task_id']}/search-{search.search_id}/turn-{turn}",
                        search.problem["task_id"]) for search in live]
    return generate_in_calls(engine, requests, n, sampling, chunk_draws, on_chunk)


def run_search(
    problems: pl.DataFrame,
    engine: Engine,
    sandbox: Any,
    scorer: Any | None,
    *,
    n: int,
    turns: int,
    searches: int,
    selection: str,
    sampling: SamplingParams,
    seed: int,
    progress: bool = False,
    finished_rows: pl.DataFrame | None = None,
    on_turn: Callable[[pl.DataFrame], None] | None = None,
    chunk_draws: int = 256,
    stop_at_public_pass: bool = False,
) -> pl.DataFrame:
    """Multi-turn Best-of-N: one row per problem x search x turn (`ROW_SCHEMA`).

    `stop_at_public_pass`: a search generates no more once its selected code passes the
    public tests; its later turns repeat that submitted answer (`selected` = -1). BoN@t and
    public@t are unchanged (they look no further than the first public pass); solved@t and
    pass@k then count the submission instead of whatever the model wrote after it.

    `finished_rows` (the rows of turns 1..k of this same search, from an interrupted run)
    are replayed instead of generated; `on_turn` receives all rows after every turn (to
    checkpoint them). Each turn's candidates are generated in engine calls of about
    `chunk_draws` draws (`generate_candidates`), and the progress bar counts them.
    """
    check_selection(selection, has_verifier=scorer is not None)
    check_sizes(n, turns, searches)
    require_problems(problems, EvaluationError, fix="load it with mucode.data.load_problems",
                     empty="no problems to evaluate: check --dataset and --limit")
    sampling = dataclasses.replace(sampling, seed=seed)
    live = [
        Search(problem, search_id,
               initial_conversation(problem["prompt"], problem["public_tests"], problem["dataset"]),
               search_rng(seed, problem["task_id"], search_id))
        for problem in problems.select(PROBLEM_COLUMNS).iter_rows(named=True)
        for search_id in range(searches)
    ]
    rows: list[dict[str, Any]] = []
    done = 0 if finished_rows is None else replay_turns(live, finished_rows, rows, n=n, turns=turns,
                                                         selection=selection)
    submitted = public_submissions(rows) if stop_at_public_pass else {}
    live[:] = [search for search in live if (search.problem["task_id"], search.search_id) not in submitted]
    per_turn = len(live) * n  # without stop_at_public_pass, every search runs all T turns
    judge = functools.partial(judge_candidates, sandbox, scorer)

    def select(search: Search, group: list[Candidate]) -> int:
        scores = None if scorer is None else [candidate.verifier_score for candidate in group]
        return select_candidate(selection, [candidate.public_passed for candidate in group], scores, search.rng)

    def stops(turn: int, candidate: Candidate) -> bool:
        # Evaluation stops early only when asked to stop at the first public pass (the submission).
        return (is_finished("eval", turn, turns, candidate.public_passed, candidate.private_passed)
                or (stop_at_public_pass and candidate.public_passed))

    with stage_progress(per_turn * turns, f"evaluate N={n} {selection}") as advance:
        started = time.perf_counter()

        def play(live: list[Search], turn: int) -> list[Choice]:
            nonlocal started
            started = time.perf_counter()
            counter = _DrawCounter(engine, advance, before=(turn - 1) * per_turn, label=f"turn {turn}/{turns}")
            return play_turn(live, turn, lambda searches, at: generate_candidates(
                engine, searches, at, n, sampling, chunk_draws, counter), judge, select)

        def record(turn: int, live: list[Search], choices: list[Choice], stopped: list[bool]) -> None:
            nonlocal submitted
            made = len(rows)
            rows.extend(search_row(search, turn, n, selection, choice) for search, choice in zip(live, choices))
            if progress:
                print(f"evaluate n={n} {selection}: turn {turn}/{turns}, {len(live)} searches x {n} candidates "
                      f"in {time.perf_counter() - started:.1f}s", file=sys.stderr, flush=True)
            rows.extend({**row, "turn": turn, "selected": -1, "num_public_passing_candidates": 0}
                        for row in submitted.values())
            if stop_at_public_pass:
                submitted |= public_submissions(rows[made:])
            advance(turn * per_turn, f"turn {turn}/{turns} done")
            if on_turn is not None:
                on_turn(pl.DataFrame(rows, schema=ROW_SCHEMA))

        run_turns(live, turns, play, stops, record, first_turn=done + 1)
    return pl.DataFrame(rows, schema=ROW_SCHEMA)


def search_row(search: Search, turn: int, n: int, selection: str, choice: Choice) -> dict[str, Any]:
    """The row of one search's turn (`ROW_SCHEMA`)."""
    candidate = choice.candidate
    return {
        "task_id": search.problem["task_id"], "dataset": search.problem["dataset"],
        "search_id": search.search_id, "turn": turn, "n": n, "selection": selection,
        "selected": choice.index, "response": candidate.response, "code": candidate.code,
        "public_passed": candidate.public_passed, "private_passed": candidate.private_passed,
        "verifier_score": candidate.verifier_score, "num_public_passing_candidates": choice.public_count,
        "public_feedback": candidate.public_feedback,
    }


def public_submissions(rows: Sequence[dict[str, Any]]) -> dict[tuple[str, int], dict[str, Any]]:
    """(task_id, search_id) -> the row of its first public pass among `rows` (its submitted answer)."""
    first: dict[tuple[str, int], dict[str, Any]] = {}
    for row in sorted(rows, key=lambda row: row["turn"]):
        if row["public_passed"]:
            first.setdefault((row["task_id"], row["search_id"]), row)
    return first


def finished_turns(finished_rows: pl.DataFrame, searches: set[tuple[str, int]], *, n: int, turns: int,
                   selection: str) -> int:
    """The number k of turns that `finished_rows` hold for a run of these searches.

    Raises `EvaluationError` unless every (task_id, search_id) has exactly turns 1..k, with
    this N and selection rule, in this version's row schema.
    """
    if finished_rows.height == 0:
        return 0
    if finished_rows.schema != pl.Schema(ROW_SCHEMA):
        raise EvaluationError("finished rows have another schema: they come from another mucode version")
    for column, value in (("n", n), ("selection", selection)):
        if finished_rows[column].unique().to_list() != [value]:
            raise EvaluationError(f"finished rows have {column} {finished_rows[column].unique().to_list()}, not {value}")
    histories = finished_rows.group_by("task_id", "search_id").agg(pl.col("turn").sort())
    covered = set(zip(histories["task_id"].to_list(), histories["search_id"].to_list()))
    if covered != searches:
        raise EvaluationError(f"finished rows cover {len(covered)} searches, this run has {len(searches)}")
    done = int(finished_rows["turn"].max())
    if done > turns or any(history != list(range(1, done + 1)) for history in histories["turn"].to_list()):
        raise EvaluationError(f"finished rows do not hold turns 1..{done} of every search (T={turns})")
    return done


def replay_turns(live: list[Search], finished_rows: pl.DataFrame, rows: list[dict[str, Any]], *, n: int, turns: int,
                 selection: str) -> int:
    """Put the finished turns of an interrupted search back: conversations, RNG draws, rows.

    Returns the number of finished turns (see `finished_turns`, which checks them first).
    """
    searches = {(search.problem["task_id"], search.search_id) for search in live}
    done = finished_turns(finished_rows, searches, n=n, turns=turns, selection=selection)
    history: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for row in finished_rows.sort("turn", maintain_order=True).iter_rows(named=True):
        history.setdefault((row["task_id"], row["search_id"]), []).append(row)
    for search in live:
        for row in history.get((search.problem["task_id"], search.search_id), []):
            replay_selection(selection, n, row["num_public_passing_candidates"], search.rng)
            search.conversation = extend_conversation(search.conversation, row["response"], row["public_passed"],
                                                      row["public_feedback"])
    rows.extend(finished_rows.iter_rows(named=True))  # in the order they were made
    if done == turns:
        live.clear()
    return done


