"""The evaluate stage: multi-turn Best-of-N search, its metrics, and the CLI entry point.

- `select_candidate`: one of N candidates by a selection rule (`random`, `lv`, `pt`, `pt+lv`).
- `run_search`: S independent searches per problem, T turns each. Every turn, all searches
  of all problems advance together: `engine.generate(conversations, n=N)` calls of about
  `chunk_draws` draws each (a problem's searches in one call; the progress bar counts the
  draws) and one sandbox batch holding the public AND private tests of every candidate. The selected
  candidate's public feedback is appended to its conversation; the private verdict is only
  recorded (for metrics), never shown to the model. All T turns run (eval mode), unless
  `stop_at_public_pass` ends a search at its submission (the first public pass).
- `summarize`: the metrics of one evaluation (one N, one selection), metric name -> value,
  with bootstrap 95% intervals over problems as `<metric>.ci_low` / `<metric>.ci_high`.
- `evaluate_to_dir`: what `mucode evaluate` calls: load problems, model, sandbox and
  verifier, run the search (and the inference-time-scaling runs over N), write the
  evaluation directories and the report (layout in `mucode.evaluation_dirs`). The rows are
  checkpointed after every turn (`mucode.eval_checkpoint`): rerun the same command after
  an interruption and it resumes at the last finished turn (`replay_turns`).

Summary metrics (t = 1..T, k = 1, 2, 5, 10, ... up to S):
  bon@t               the first public pass within t turns also passes the private tests
  public@t            some selected code within t turns passes the public tests
  solved@t            some selected code within t turns passes the private tests
  pass@k              multi-turn pass@k over the S searches (solved within T turns)
  single_turn_pass@1  the turn-1 selected code passes the private tests
  problems, searches, n, turns   sizes (no interval)

Seeding: `random` selection and `pt` tie-breaks use an RNG seeded by (seed, task, search);
sampling draws candidate j of (task, search, turn) from its own seed stream (the engine's
contract in `mucode.engines.sampling`), so no two candidates repeat a sample, whatever the
chunking, and a resumed run samples as an uninterrupted one. This module does not
train, and does not render plots (that is `mucode.report`).
"""

from __future__ import annotations

from mucode.orchestration import stage_task

import dataclasses
import itertools
import math
import random
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from mucode.columns import require_columns
from mucode import metrics
from mucode.eval_checkpoint import (
    checkpoint_key,
    checkpoint_path,
    files_fingerprint,
    load_checkpoint,
    problems_digest,
    remove_checkpoints,
    save_checkpoint,
)
from mucode.environment import Message, extend_conversation, initial_conversation, is_finished
from mucode.progress import stage_progress
from mucode.prompts import extract_code, first_user_message

if TYPE_CHECKING:
    from mucode.config import Config
    from mucode.engines.base import Engine
    from mucode.engines.sampling import SamplingParams

SELECTION_RULES: tuple[str, ...] = ("random", "lv", "pt", "pt+lv")
VERIFIER_RULES: tuple[str, ...] = ("lv", "pt+lv")
# pt+lv ranks by 100 * public pass + verifier score: the public tests decide, the verifier
# ranks within the passing (or within the failing) candidates.
PUBLIC_PASS_WEIGHT = 100.0
PASS_AT_K_VALUES: tuple[int, ...] = (1, 2, 5, 10, 20, 50, 100)
PROBLEM_COLUMNS: tuple[str, ...] = ("task_id", "dataset", "prompt", "public_tests", "private_tests")

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


class EvaluationError(ValueError):
    """An evaluation was asked for with unusable settings; the message is one line."""


# --- selection -----------------------------------------------------------------------------


def selection_score(rule: str, public_passed: bool, verifier_score: float) -> float:
    """The number a deterministic rule maximises (`lv`, `pt+lv`)."""
    if rule == "lv":
        return verifier_score
    if rule == "pt+lv":
        return PUBLIC_PASS_WEIGHT * float(public_passed) + verifier_score
    raise EvaluationError(f"selection {rule!r} has no score: use lv or pt+lv")


def select_candidate(
    rule: str,
    public_passed: Sequence[bool],
    verifier_scores: Sequence[float] | None,
    rng: random.Random,
) -> int:
    """Index of the chosen candidate among N, by selection rule.

    random: uniform. pt: uniform among the public-passing ones (all if none pass).
    lv / pt+lv: the highest score, the first of equals.
    """
    check_selection(rule, has_verifier=verifier_scores is not None)
    if not public_passed:
        raise EvaluationError("select_candidate needs at least one candidate")
    count = len(public_passed)
    if rule == "random":
        return rng.randrange(count)
    if rule == "pt":
        passing = [index for index, passed in enumerate(public_passed) if passed]
        return rng.choice(passing or list(range(count)))
    assert verifier_scores is not None
    if len(verifier_scores) != count:
        raise EvaluationError(f"{len(verifier_scores)} verifier scores for {count} candidates")
    scores = [selection_score(rule, passed, score) for passed, score in zip(public_passed, verifier_scores)]
    return max(range(count), key=lambda index: (scores[index], -index))


def check_selection(rule: str, *, has_verifier: bool) -> None:
    if rule not in SELECTION_RULES:
        raise EvaluationError(f"unknown selection {rule!r}: use one of {', '.join(SELECTION_RULES)}")
    if rule in VERIFIER_RULES and not has_verifier:
        raise EvaluationError(f"selection {rule} needs --verifier; use pt for a base model")


def search_rng(seed: int, task_id: str, search_id: int) -> random.Random:
    """The selection RNG of one search: independent of batch order and of other problems."""
    return random.Random(f"{seed}/{task_id}/{search_id}")


def replay_selection(rule: str, n: int, public_count: int, rng: random.Random) -> None:
    """Advance a search's RNG as `select_candidate` did on a finished turn.

    Its draws depend only on N and the number of public-passing candidates, so a resumed
    search continues with the same random stream as an uninterrupted one.
    """
    public = [True] * public_count + [False] * (n - public_count)
    select_candidate(rule, public, [0.0] * n if rule in VERIFIER_RULES else None, rng)


# --- the batched search ----------------------------------------------------------------------


@dataclasses.dataclass
class _Search:
    problem: dict[str, str]
    search_id: int
    conversation: list[Message]
    rng: random.Random


class _DrawCounter:
    """Progress within one turn: draws generated so far and the turn's tokens/s."""

    def __init__(self, engine: Engine, advance: Callable[[int, str], None], before: int, label: str) -> None:
        self.engine, self.advance, self.done, self.label = engine, advance, before, label
        self.tokens_before, self.started = engine.tokens_generated, time.perf_counter()

    def __call__(self, draws: int) -> None:
        self.done += draws
        rate = (self.engine.tokens_generated - self.tokens_before) / max(time.perf_counter() - self.started, 1e-9)
        self.advance(self.done, f"{self.label}  {rate:.0f} tok/s")


@dataclasses.dataclass(frozen=True)
class _Candidate:
    response: str
    code: str
    public_passed: bool
    public_feedback: str
    private_passed: bool
    verifier_score: float


def check_problems(problems: pl.DataFrame) -> None:
    require_columns(problems, PROBLEM_COLUMNS, EvaluationError, "problems frame",
                    "load it with mucode.data.load_problems")
    if problems.height == 0:
        raise EvaluationError("no problems to evaluate: check --dataset and --limit")
    if problems["task_id"].n_unique() != problems.height:
        raise EvaluationError("problems frame has duplicate task_id values: deduplicate it first")


def check_sizes(n: int, turns: int, searches: int) -> None:
    for name, value in (("n", n), ("turns", turns), ("searches", searches)):
        if value < 1:
            raise EvaluationError(f"--{name} must be >= 1, got {value}")


def execute_candidates(sandbox: Any, candidates: list[tuple[dict[str, str], str]]) -> list[tuple[Any, Any]]:
    """(public verdict, private verdict) per (problem, code), in one sandbox batch.

    Identical programs run once: small models often repeat an answer.
    """
    from mucode.data.programs import distinct_programs

    programs, job_program = distinct_programs(
        (problem, code, problem[tests]) for problem, code in candidates for tests in ("public_tests", "private_tests"))
    pairs = list(zip(job_program[0::2], job_program[1::2]))
    verdicts = sandbox.run(programs)
    if len(verdicts) != len(programs):
        raise EvaluationError(f"sandbox returned {len(verdicts)} verdicts for {len(programs)} programs")
    return [(verdicts[public], verdicts[private]) for public, private in pairs]


def score_candidates(scorer: Any | None, candidates: list[tuple[dict[str, str], str]]) -> list[float]:
    """The verifier's score of every (problem, response); NaN everywhere without a verifier.

    Each distinct (problem, response) is scored once.
    """
    if scorer is None:
        return [math.nan] * len(candidates)
    unique = list(dict.fromkeys((problem["task_id"], response) for problem, response in candidates))
    problems = {problem["task_id"]: problem for problem, _ in candidates}
    prompts = [first_user_message(problems[task]["prompt"], problems[task]["public_tests"], problems[task]["dataset"])
               for task, _ in unique]
    scores = [float(score) for score in scorer.score(prompts, [response for _, response in unique])]
    if len(scores) != len(unique):
        raise EvaluationError(f"verifier returned {len(scores)} scores for {len(unique)} answers")
    by_pair = dict(zip(unique, scores))
    return [by_pair[(problem["task_id"], response)] for problem, response in candidates]


def _check_generated(samples: list[list[str]], searches: int, n: int) -> None:
    if len(samples) != searches or any(len(row) != n for row in samples):
        raise EvaluationError(f"engine returned {[len(row) for row in samples]} samples, expected {searches} x {n}")


def problem_chunks(live: Sequence[_Search], searches_per_chunk: int) -> list[list[_Search]]:
    """`live` cut into consecutive chunks of at most `searches_per_chunk` searches, never
    splitting one problem's searches (a chunk holds more only when one problem has more)."""
    chunks: list[list[_Search]] = []
    for _, group in itertools.groupby(live, key=lambda search: search.problem["task_id"]):
        searches = list(group)
        if chunks and len(chunks[-1]) + len(searches) <= searches_per_chunk:
            chunks[-1].extend(searches)
        else:
            chunks.append(searches)
    return chunks


def generate_candidates(engine: Engine, live: Sequence[_Search], turn: int, n: int, sampling: SamplingParams,
                        chunk_draws: int, on_chunk: Callable[[int], None] | None = None) -> list[list[str]]:
    """N replies for every live search, `[search][candidate]`, in engine calls of about
    `chunk_draws` draws, so progress shows within a turn that lasts an hour on CPU.

    Candidate j of a search at a turn is sample j of the seed stream
    `<task>/search-<s>/turn-<t>` (`mucode.engines.sampling`): S searches of one problem get
    different samples whatever the chunking. Calls hold whole problems (for the progress bar).
    """
    samples: list[list[str]] = []
    for chunk in problem_chunks(live, max(1, chunk_draws // n)):
        streams = [f"{search.problem['task_id']}/search-{search.search_id}/turn-{turn}" for search in chunk]
        generated = engine.generate([search.conversation for search in chunk], n=n, sampling=sampling,
                                    streams=streams)
        _check_generated(generated, len(chunk), n)
        samples.extend(generated)
        if on_chunk is not None:
            on_chunk(len(chunk) * n)
    return samples


def _advance(
    live: list[_Search], engine: Engine, sandbox: Any, scorer: Any | None, turn: int, n: int, selection: str,
    sampling: SamplingParams, chunk_draws: int, on_chunk: Callable[[int], None] | None,
) -> list[tuple[_Candidate, int, int]]:
    """One turn of every live search: (selected candidate, its index, public-passing count)."""
    samples = generate_candidates(engine, live, turn, n, sampling, chunk_draws, on_chunk)
    flat = [(search.problem, response) for search, responses in zip(live, samples) for response in responses]
    codes = [extract_code(response) for _, response in flat]
    verdicts = execute_candidates(sandbox, [(problem, code) for (problem, _), code in zip(flat, codes)])
    scores = score_candidates(scorer, flat)
    candidates = [
        _Candidate(response, code, bool(public.passed), public.feedback, bool(private.passed), score)
        for (_, response), code, (public, private), score in zip(flat, codes, verdicts, scores)
    ]
    chosen: list[tuple[_Candidate, int, int]] = []
    for position, search in enumerate(live):
        group = candidates[position * n:(position + 1) * n]
        public = [candidate.public_passed for candidate in group]
        index = select_candidate(selection, public, None if scorer is None else [c.verifier_score for c in group],
                                 search.rng)
        chosen.append((group[index], index, sum(public)))
    return chosen


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
    check_problems(problems)
    sampling = dataclasses.replace(sampling, seed=seed)
    live = [
        _Search(problem, search_id,
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
    with stage_progress(per_turn * turns, f"evaluate N={n} {selection}") as advance:
        for turn in range(done + 1, turns + 1):
            counter = _DrawCounter(engine, advance, before=(turn - 1) * per_turn, label=f"turn {turn}/{turns}")
            made = len(rows)
            _search_turn(turn, turns, live, rows, engine, sandbox, scorer, n, selection, sampling, progress,
                         chunk_draws, counter, stop_at_public_pass)
            rows.extend({**row, "turn": turn, "selected": -1, "num_public_passing_candidates": 0}
                        for row in submitted.values())
            if stop_at_public_pass:
                submitted |= public_submissions(rows[made:])
            advance(turn * per_turn, f"turn {turn}/{turns} done")
            if on_turn is not None:
                on_turn(pl.DataFrame(rows, schema=ROW_SCHEMA))
    return pl.DataFrame(rows, schema=ROW_SCHEMA)


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


def replay_turns(live: list[_Search], finished_rows: pl.DataFrame, rows: list[dict[str, Any]], *, n: int, turns: int,
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


def _search_turn(turn: int, turns: int, live: list[_Search], rows: list[dict[str, Any]], engine: Engine, sandbox: Any,
                 scorer: Any | None, n: int, selection: str, sampling: SamplingParams, progress: bool,
                 chunk_draws: int, on_chunk: Callable[[int], None], stop_at_public_pass: bool = False) -> None:
    """Advance every search by one turn, append its rows, extend its conversation."""
    started = time.perf_counter()
    chosen = _advance(live, engine, sandbox, scorer, turn, n, selection, sampling, chunk_draws, on_chunk)
    for search, (candidate, index, public_count) in zip(live, chosen):
        rows.append({
            "task_id": search.problem["task_id"], "dataset": search.problem["dataset"],
            "search_id": search.search_id, "turn": turn, "n": n, "selection": selection,
            "selected": index, "response": candidate.response, "code": candidate.code,
            "public_passed": candidate.public_passed, "private_passed": candidate.private_passed,
            "verifier_score": candidate.verifier_score, "num_public_passing_candidates": public_count,
            "public_feedback": candidate.public_feedback,
        })
        search.conversation = extend_conversation(search.conversation, candidate.response,
                                                  candidate.public_passed, candidate.public_feedback)
    if progress:
        print(f"evaluate n={n} {selection}: turn {turn}/{turns}, {len(live)} searches x {n} candidates "
              f"in {time.perf_counter() - started:.1f}s", file=sys.stderr, flush=True)
    # Evaluation stops early only when asked to stop at the first public pass (the submission).
    live[:] = [search for search, (candidate, _, _) in zip(live, chosen)
               if not is_finished("eval", turn, turns, candidate.public_passed, candidate.private_passed)
               and not (stop_at_public_pass and candidate.public_passed)]


# --- metrics of one evaluation ----------------------------------------------------------------


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


# --- the CLI entry point ----------------------------------------------------------------------


def scaling_plan(n: int, scaling_ns: Sequence[int]) -> list[int]:
    """The N values to run: the main N first, then each scaling N once."""
    plan = [n]
    for value in scaling_ns:
        if value < 1:
            raise EvaluationError(f"scaling N values must be >= 1, got {value}")
        if value not in plan:
            plan.append(value)
    return plan


def evaluate_to_dir(
    cfg: Config,
    *,
    generator: str,
    dataset: str,
    out: str | Path,
    verifier: str | None = None,
    selection: str | None = None,
    n: int | None = None,
    turns: int | None = None,
    searches: int | None = None,
    limit: int | None = None,
    scaling_ns: Sequence[int] = (),
    temperature: float | None = None,
    method: str | None = None,
    progress: bool = True,
) -> dict[str, float]:
    """Evaluate a generator on a dataset and write `out` (rows.parquet, summary.json,
    meta.json, report.md + PNGs; scaling runs under `out/scaling/n<N>/`).

    Unset options come from `cfg.evaluation` (and `cfg.data.eval_limit`). Returns the summary
    (metric name -> value) of the main run (N = `n`).
    """
    evaluation = cfg.evaluation
    selection = selection or evaluation.selection
    check_selection(selection, has_verifier=verifier is not None)
    n, turns = n or evaluation.n, turns or evaluation.turns
    searches = searches or evaluation.searches
    check_sizes(n, turns, searches)
    plan = scaling_plan(n, scaling_ns)

    from mucode.data import load_problems
    from mucode.models import resolve_model
    from mucode.evaluation_dirs import EvaluationSummary, save_evaluation
    from mucode.report import build_report
    from mucode.resources import make_engine_from_config, make_sandbox_from_config, sampling_params

    problems = load_problems(dataset, cfg.data.eval_split, data_dir=cfg.data.data_dir,
                             limit=limit or cfg.data.eval_limit)
    settings = evaluation.sampling
    if temperature is not None:
        settings = settings.model_copy(update={"temperature": temperature})
    sampling = sampling_params(settings, seed=cfg.seed)
    out = Path(out)
    summaries: list[dict[str, float]] = []
    scorer = None
    if verifier is not None:
        from mucode.tasks.verifier import VerifierScorer

        scorer = VerifierScorer(verifier, batch_size=cfg.verifier.batch_size, max_length=cfg.verifier.max_length)
    generator_path = resolve_model(generator)
    with make_engine_from_config(cfg, generator_path) as engine, make_sandbox_from_config(cfg) as sandbox:
        for index, value in enumerate(plan):
            started = time.perf_counter()
            settings = {"generator": files_fingerprint(generator_path),
                        "verifier": files_fingerprint(verifier) if verifier else None,
                        "problems": problems_digest(problems),
                        "n": value, "turns": turns, "searches": searches, "selection": selection,
                        "sampling": dataclasses.asdict(sampling), "seed": cfg.seed,
                        # only when set, so the checkpoints of runs without it keep their keys
                        **({"stop_at_public_pass": True} if evaluation.stop_at_public_pass else {})}
            checkpoint = checkpoint_path(out, value, checkpoint_key(settings))
            for stale in remove_checkpoints(out, value, keep=checkpoint):
                print(f"removed {stale}: a checkpoint of other settings", file=sys.stderr)
            finished = _resumable_rows(checkpoint, problems, n=value, turns=turns, searches=searches,
                                       selection=selection)
            rows = run_search(problems, engine, sandbox, scorer, n=value, turns=turns, searches=searches,
                              selection=selection, sampling=sampling, seed=cfg.seed, progress=progress,
                              finished_rows=finished, on_turn=lambda made: save_checkpoint(checkpoint, made),
                              chunk_draws=4 * cfg.engine.batch_size,
                              stop_at_public_pass=evaluation.stop_at_public_pass)
            summary = EvaluationSummary(
                method=method or generator, dataset=dataset, n=value, selection=selection, turns=turns,
                searches=searches, metrics=summarize(rows, seed=cfg.seed),
                details={"generator": generator, "verifier": verifier or "", "seed": cfg.seed,
                         "temperature": sampling.temperature, "max_new_tokens": sampling.max_new_tokens,
                         "wall_s": round(time.perf_counter() - started, 2),
                         "resumed_after_turn": 0 if finished is None else int(finished["turn"].max() or 0)},
            )
            save_evaluation(out if index == 0 else out / "scaling" / f"n{value}", rows, summary)
            checkpoint.unlink(missing_ok=True)
            summaries.append(summary.metrics)
    build_report(out)
    return summaries[0]


def _resumable_rows(checkpoint: Path, problems: pl.DataFrame, *, n: int, turns: int, searches: int,
                    selection: str) -> pl.DataFrame | None:
    """The checkpointed rows of this run, or None (none, unreadable, or not replayable: start over)."""
    finished = load_checkpoint(checkpoint)
    if finished is None:
        return None
    expected = {(task_id, search_id) for task_id in problems["task_id"].to_list() for search_id in range(searches)}
    try:
        done = finished_turns(finished, expected, n=n, turns=turns, selection=selection)
    except EvaluationError as error:
        print(f"checkpoint {checkpoint} not used: {error}; starting from turn 1", file=sys.stderr)
        return None
    print(f"resuming from {checkpoint}: {done} of {turns} turns finished", file=sys.stderr, flush=True)
    return finished


def evaluate_stage(cfg, root: str, problems, generator, verifier, selection: str, n: int, label: str):
    """Store-level stage: multi-turn Best-of-N of a stored generator (None = base model) on stored problems.

    The rows are the artifact; its manifest carries what the report needs (method, dataset,
    N, selection, the summary with intervals), so the report is rebuilt from artifacts alone.
    """
    import time

    from mucode.artifacts import ArtifactStore
    from mucode.resources import make_engine_from_config, make_sandbox_from_config, model_hash, model_path, sampling_params

    check_selection(selection, has_verifier=verifier is not None)
    store = ArtifactStore(root)
    frame = store.get_frame(problems)
    scorer = None
    if verifier is not None:
        from mucode.tasks.verifier import VerifierScorer

        scorer = VerifierScorer(store.get_dir(verifier), batch_size=cfg.verifier.batch_size,
                                max_length=cfg.verifier.max_length)
    started = time.perf_counter()
    with make_engine_from_config(cfg, model_path(cfg, store, generator)) as engine, make_sandbox_from_config(cfg) as sandbox:
        rows = run_search(frame, engine, sandbox, scorer, n=n, turns=cfg.evaluation.turns,
                          searches=cfg.evaluation.searches, selection=selection,
                          sampling=sampling_params(cfg.evaluation.sampling, seed=cfg.seed), seed=cfg.seed,
                          chunk_draws=4 * cfg.engine.batch_size,
                          stop_at_public_pass=cfg.evaluation.stop_at_public_pass)
    summary = summarize(rows, seed=cfg.seed)
    meta = {"method": label, "dataset": str(frame["dataset"][0]), "n": n, "selection": selection,
            "turns": cfg.evaluation.turns, "searches": cfg.evaluation.searches,
            "details": {"generator": model_hash(cfg, generator), "verifier": verifier.hash if verifier else "",
                        "seed": cfg.seed, "wall_s": round(time.perf_counter() - started, 2)}}
    inputs = [problems.hash, model_hash(cfg, generator)] + ([verifier.hash] if verifier is not None else [])
    # One folder per method: two methods can produce identical rows (an arm that had nothing to
    # train on is the base model), and one content-addressed file would carry only one manifest.
    return store.put_frame(rows, stage=f"evaluate-{label}", config_hash=cfg.section_digest("model", "engine", "evaluation", "sandbox", "seed"),
                           inputs=inputs, extra={"evaluation": meta, "metrics": summary})


# The Prefect task: cached on the config sections read and the input artifacts' hashes.
evaluate_task = stage_task(evaluate_stage, name="evaluate", sections=("model", "engine", "evaluation", "sandbox", "seed"),
                           gpu=True)


def alias_evaluation_stage(cfg, root: str, evaluation, label: str, turns: int | None = None):
    """Store-level stage: an evaluation's rows under another method's name, cut to `turns` if given.

    For a method whose generator and verifier are those of an evaluation already made (an
    arm that had nothing to train on is the base model): the search would repeat it exactly.
    With `turns`, the rows of turns 1..turns and their summary: the first t turns of a
    T-turn search are the t-turn search (the same conversations, seeds and selections).
    """
    from mucode.artifacts import ArtifactStore

    store = ArtifactStore(root)
    manifest = store.manifest(evaluation)
    original = manifest["evaluation"]
    rows, summary = store.get_frame(evaluation), manifest["metrics"]
    if turns is None or turns == original["turns"]:
        meta = {**original, "method": label, "details": {**original["details"], "same_as": original["method"]}}
    else:
        if not 1 <= turns < original["turns"]:
            raise EvaluationError(f"cannot cut a {original['turns']}-turn evaluation to {turns} turns")
        rows = rows.filter(pl.col("turn") <= turns)
        summary = summarize(rows, seed=cfg.seed)
        meta = {**original, "method": label, "turns": turns,
                "details": {**original["details"], "first_turns_of": original["method"]}}
    return store.put_frame(rows, stage=f"evaluate-{label}", config_hash=manifest.get("config_hash", ""),
                           inputs=[evaluation.hash], extra={"evaluation": meta, "metrics": summary})


alias_evaluation_task = stage_task(alias_evaluation_stage, name="evaluate-alias", sections=("seed",))
