"""The multi-turn loop, written once: generate, extract code, run the tests, select, give feedback, stop.

Every turn, each live search (one problem's conversation so far) gets N replies from a
`generate` function; each reply's code runs on the problem's public tests (the feedback the
model reads) and private tests (the record, and the training stop rule) in one sandbox
batch, and a verifier scores it when there is one (`judge_candidates`). A `select` rule keeps
one candidate per search; its public feedback extends the conversation unless the search
stops. A training rollout (`tasks.rollout`) is this loop with N = 1 and the training stop
rule; an evaluation (`mucode.best_of_n`) is the same loop with N candidates and a selection
rule.

This module does not choose seeds or seed streams (the callers' `generate` does), does not
build rows (the callers' `record` does) and does not decide selection rules (`mucode.selection`).
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Callable
from typing import Any

import polars as pl

from mucode.columns import require_columns
from mucode.data.programs import distinct_programs
from mucode.environment import Message, extend_conversation
from mucode.prompts import extract_code, first_user_message
from mucode.selection import EvaluationError

# The problem columns a search reads.
PROBLEM_COLUMNS: tuple[str, ...] = ("task_id", "dataset", "prompt", "public_tests", "private_tests")


@dataclasses.dataclass
class Search:
    """One search of one problem (a training rollout is one too): its conversation so far and
    the RNG of its selections (None when nothing is drawn)."""

    problem: dict[str, str]
    search_id: int
    conversation: list[Message]
    rng: random.Random | None = None


@dataclasses.dataclass(frozen=True)
class Candidate:
    response: str
    code: str
    public_passed: bool
    public_feedback: str
    private_passed: bool
    verifier_score: float


@dataclasses.dataclass(frozen=True)
class Choice:
    """The candidate a search kept at a turn, its index among the N, and how many passed publicly."""

    candidate: Candidate
    index: int
    public_count: int


Generate = Callable[[list[Search], int], list[list[str]]]  # (live, turn) -> replies [search][candidate]
Judge = Callable[[list[tuple[dict[str, str], str]]], list[Candidate]]  # (problem, reply) pairs -> candidates
Select = Callable[[Search, list[Candidate]], int]
Play = Callable[[list[Search], int], list[Choice]]
Record = Callable[[int, list[Search], list[Choice], list[bool]], None]  # (turn, live, choices, stops)


def require_problems(problems: pl.DataFrame, error: type[Exception], *, fix: str, empty: str) -> None:
    """Raise `error` (one line) unless `problems` has the columns a search reads, a row, and unique task ids."""
    require_columns(problems, PROBLEM_COLUMNS, error, "problems frame", fix)
    if problems.height == 0:
        raise error(empty)
    if problems["task_id"].n_unique() != problems.height:
        raise error("problems frame has duplicate task_id values: deduplicate it first")


def execute_candidates(sandbox: Any, candidates: list[tuple[dict[str, str], str]]) -> list[tuple[Any, Any]]:
    """(public verdict, private verdict) per (problem, code), in one sandbox batch.

    Identical programs run once: small models often repeat an answer.
    """
    programs, job_program = distinct_programs(
        (problem, code, problem[tests]) for problem, code in candidates for tests in ("public_tests", "private_tests"))
    verdicts = sandbox.run(programs)
    if len(verdicts) != len(programs):
        raise EvaluationError(f"sandbox returned {len(verdicts)} verdicts for {len(programs)} programs")
    return [(verdicts[public], verdicts[private]) for public, private in zip(job_program[0::2], job_program[1::2])]


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


def judge_candidates(sandbox: Any, scorer: Any | None, replies: list[tuple[dict[str, str], str]]) -> list[Candidate]:
    """Every (problem, reply) as a candidate: its code, test verdicts and verifier score."""
    codes = [extract_code(response) for _, response in replies]
    verdicts = execute_candidates(sandbox, [(problem, code) for (problem, _), code in zip(replies, codes)])
    scores = score_candidates(scorer, replies)
    return [
        Candidate(response, code, bool(public.passed), public.feedback, bool(private.passed), score)
        for (_, response), code, (public, private), score in zip(replies, codes, verdicts, scores)
    ]


def play_turn(live: list[Search], turn: int, generate: Generate, judge: Judge, select: Select) -> list[Choice]:
    """One turn of every live search: generate its candidates, judge them, keep one."""
    samples = generate(live, turn)
    candidates = judge([(search.problem, response) for search, responses in zip(live, samples)
                        for response in responses])
    choices: list[Choice] = []
    start = 0
    for search, responses in zip(live, samples):
        group = candidates[start:start + len(responses)]
        start += len(responses)
        index = select(search, group)
        choices.append(Choice(group[index], index, sum(candidate.public_passed for candidate in group)))
    return choices


def run_turns(live: list[Search], turns: int, play: Play, stops: Callable[[int, Candidate], bool], record: Record,
              *, first_turn: int = 1, until_empty: bool = False) -> None:
    """The loop: turns `first_turn`..`turns` of the `live` searches, which it empties as they stop.

    `record` sees each turn's choices and stop decisions before the conversations grow (a
    row holds the conversation its reply answered). `until_empty` ends the loop once no
    search is live; otherwise every turn is played (and recorded) even with none live.
    """
    for turn in range(first_turn, turns + 1):
        if until_empty and not live:
            break
        choices = play(live, turn)
        stopped = [stops(turn, choice.candidate) for choice in choices]
        record(turn, live, choices, stopped)
        for search, choice, stop in zip(live, choices, stopped):
            if not stop:
                search.conversation = extend_conversation(search.conversation, choice.candidate.response,
                                                          choice.candidate.public_passed,
                                                          choice.candidate.public_feedback)
        live[:] = [search for search, stop in zip(live, stopped) if not stop]

