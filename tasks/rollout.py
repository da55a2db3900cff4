"""Rollout stage: run the generator in the multi-turn code environment.

For every problem, K rollouts of up to T turns. All live trajectories of all problems advance
together: each turn, every unfinished trajectory contributes one generation request, and the
turn's programs (each answer's code on the public tests, for feedback, and on the oracle
tests, for the stop rule and the record) go to the sandbox as one batch. Training rollouts
stop once a turn passes public and private tests; evaluation-mode rollouts run all T turns.
The loop itself is `mucode.search` (one answer per rollout and turn); this module chooses
the seed streams (`generate_turn`) and writes the rows.

The engine's replies are kept by call under ROOT/generations/ (`mucode.generation_memo`), so
a killed rollout stage, run again, reads its finished chunks back instead of generating them.

Writes one row per turn (schema in docs/architecture.md). It does not label data for
training (that is the execute stage) and does not choose among samples (that is evaluation).
"""

from __future__ import annotations

from mucode.orchestration import stage_task

import functools
import json
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import polars as pl

from mucode.engine_calls import Request, generate_in_calls
from mucode.engines import SamplingParams
from mucode.environment import Mode, initial_conversation, is_finished
from mucode.prompts import feedback_text
from mucode.search import Candidate, Choice, Search, judge_candidates, play_turn, require_problems, run_turns

ROLLOUT_SCHEMA = {
    "task_id": pl.String, "rollout_id": pl.Int64, "turn": pl.Int64, "prompt_messages": pl.String,
    "response": pl.String, "code": pl.String, "public_passed": pl.Boolean, "feedback": pl.String,
    "private_passed": pl.Boolean, "final": pl.Boolean, "generator": pl.String,
    "temperature": pl.Float64, "top_p": pl.Float64, "max_new_tokens": pl.Int64, "seed": pl.Int64,
}


class RolloutInputError(ValueError):
    """The problems given to the rollout stage are unusable; the message is one line."""


@dataclass
class RolloutStats:
    """What a progress display shows: turn, live trajectories, generated tokens and time."""

    turn: int = 0
    live: int = 0
    done_in_turn: int = 0
    tokens: int = 0
    generation_s: float = 0.0
    execution_s: float = 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.generation_s if self.generation_s else 0.0


ProgressCallback = Callable[[RolloutStats], None]


def turn_seed(seed: int, turn: int) -> int:
    # Each turn samples with its own seed so that a rerun reproduces every turn.
    return seed * 1_000 + turn


def generate_turn(engine, searches: Sequence[Search], turn: int, num_rollouts: int,
                  sampling: SamplingParams, chunk_size: int,
                  on_chunk: Callable[[int], None]) -> list[str]:
    """One answer for each live rollout, in order, in engine calls of about `chunk_size`
    draws (`mucode.engine_calls`).

    On turn 1 every rollout of a problem shares the same conversation, so one request with
    n = K samples per problem is sent (the engine shares the prompt); later turns differ.
    Seed streams (`mucode.engines.sampling`): rollout r of a problem is sample r of the
    stream `<task>/turn-1`, then the only sample of `<task>/rollout-r/turn-t`, so identical
    conversations never repeat a sample, whatever the chunk size.
    """
    seeded = SamplingParams(temperature=sampling.temperature, top_p=sampling.top_p,
                            max_new_tokens=sampling.max_new_tokens, seed=turn_seed(sampling.seed, turn))
    if turn == 1:
        requests = [Request(s.conversation, f"{s.problem['task_id']}/turn-1", s.problem["task_id"])
                    for s in searches[::num_rollouts]]
        replies = generate_in_calls(engine, requests, num_rollouts, seeded, chunk_size, on_chunk)
        return [answer for samples in replies for answer in samples]
    streams = [f"{s.problem['task_id']}/rollout-{s.search_id}/turn-{turn}" for s in searches]
    requests = [Request(s.conversation, stream, stream) for s, stream in zip(searches, streams)]
    return [samples[0] for samples in generate_in_calls(engine, requests, 1, seeded, chunk_size, on_chunk)]


def run_rollouts(problems: pl.DataFrame, engine, sandbox, *, num_rollouts: int, max_turns: int,
                 sampling: SamplingParams, mode: Mode = "train", generator_hash: str = "",
                 chunk_size: int = 64, progress: ProgressCallback | None = None) -> pl.DataFrame:
    """K rollouts of up to T turns for every problem; one row per turn.

    The multi-turn loop of `mucode.search` with one answer per rollout and turn (kept
    without selection) and the `mode`'s stop rule.
    """
    require_problems(problems, RolloutInputError, fix="build it with `mucode data`",
                     empty="no problems to roll out: check the dataset split and --limit")
    live = [
        Search(row, rollout_id, initial_conversation(row["prompt"], row["public_tests"], row["dataset"]))
        for row in problems.iter_rows(named=True) for rollout_id in range(num_rollouts)
    ]
    rows: list[dict] = []
    stats = RolloutStats()
    counted = {"tokens": 0, "at": 0.0}  # the engine's token count and the clock when stats last caught up

    def count_generation() -> None:
        now = time.perf_counter()
        stats.tokens += engine.tokens_generated - counted["tokens"]
        stats.generation_s += now - counted["at"]
        counted.update(tokens=engine.tokens_generated, at=now)

    def advance(count: int) -> None:
        stats.done_in_turn += count
        count_generation()  # per chunk, so the first turn's display shows tokens/s too
        if progress:
            progress(stats)

    def generate(searches: list[Search], turn: int) -> list[list[str]]:
        stats.turn, stats.live, stats.done_in_turn = turn, len(searches), 0
        counted.update(tokens=engine.tokens_generated, at=time.perf_counter())
        answers = generate_turn(engine, searches, turn, num_rollouts, sampling, chunk_size, advance)
        count_generation()
        return [[answer] for answer in answers]

    def judge(replies: list[tuple[dict[str, str], str]]) -> list[Candidate]:
        started = time.perf_counter()
        candidates = judge_candidates(sandbox, None, replies)
        stats.execution_s += time.perf_counter() - started
        return candidates

    def stops(turn: int, candidate: Candidate) -> bool:
        return is_finished(mode, turn, max_turns, candidate.public_passed, candidate.private_passed)

    def record(turn: int, searches: list[Search], choices: list[Choice], stopped: list[bool]) -> None:
        for search, choice, final in zip(searches, choices, stopped):
            candidate = choice.candidate
            rows.append({
                "task_id": search.problem["task_id"], "rollout_id": search.search_id, "turn": turn,
                "prompt_messages": json.dumps(search.conversation), "response": candidate.response,
                "code": candidate.code, "public_passed": candidate.public_passed,
                "feedback": feedback_text(candidate.public_passed, candidate.public_feedback),
                "private_passed": candidate.private_passed, "final": final,
                "generator": generator_hash, "temperature": sampling.temperature, "top_p": sampling.top_p,
                "max_new_tokens": sampling.max_new_tokens, "seed": sampling.seed,
            })
        if progress:
            progress(stats)

    play = functools.partial(play_turn, generate=generate, judge=judge, select=lambda search, group: 0)
    run_turns(live, max_turns, play, stops, record, until_empty=True)
    order = {task_id: index for index, task_id in enumerate(problems["task_id"])}
    rows.sort(key=lambda row: (order[row["task_id"]], row["rollout_id"], row["turn"]))
    return pl.DataFrame(rows, schema=ROLLOUT_SCHEMA)


def summarize_rollouts(rollouts: pl.DataFrame) -> dict[str, float]:
    """Pass rates per turn and overall, for tables and progress displays."""
    finals = rollouts.filter(pl.col("final"))
    summary = {
        "rows": float(rollouts.height),
        "rollouts": float(finals.height),
        "final_private_pass_rate": float(finals["private_passed"].mean() or 0.0),
        "any_turn_private_pass_rate": float(
            rollouts.group_by("task_id", "rollout_id").agg(pl.col("private_passed").any())["private_passed"].mean() or 0.0),
    }
    for turn, group in rollouts.group_by("turn", maintain_order=True):
        summary[f"turn{turn[0]}_public_pass_rate"] = float(group["public_passed"].mean() or 0.0)
    return summary


# The config sections the stage reads: its cache key and its manifest's config hash.
SECTIONS = ("model", "engine", "rollout", "sandbox", "seed")


def rollout_stage(cfg, root: str, problems, generator, iteration: int):
    """Store-level stage: roll out `generator` (None = the base model) on stored problems."""
    from mucode.artifacts import ArtifactStore
    from mucode.progress import rollout_progress
    from mucode.stage_resources import (
        generator_key, generator_model, make_sandbox_from_config, memoized_engine, model_hash, sampling_params)

    store = ArtifactStore(root)
    frame = store.get_frame(problems)
    generator_hash = model_hash(cfg, generator)
    sampling = sampling_params(cfg.rollout.sampling, seed=cfg.seed * 100 + iteration)
    model = generator_model(cfg, store, generator)
    # Replies kept by call: a killed rollout, run again, reads its finished chunks back.
    with memoized_engine(cfg, store, model, generator_key(generator, model)) as engine, \
            make_sandbox_from_config(cfg) as sandbox, \
            rollout_progress(frame.height * cfg.rollout.num_rollouts, cfg.rollout.max_turns) as progress:
        rollouts = run_rollouts(frame, engine, sandbox, num_rollouts=cfg.rollout.num_rollouts,
                                max_turns=cfg.rollout.max_turns, sampling=sampling, mode="train",
                                generator_hash=generator_hash, chunk_size=4 * cfg.engine.batch_size,
                                progress=progress)
    return store.put_frame(rollouts, stage="rollout",
                           config_hash=cfg.section_digest(*SECTIONS),
                           inputs=[problems.hash, generator_hash],
                           extra={"iteration": iteration, "metrics": summarize_rollouts(rollouts),
                                  "reused_generate_calls": engine.reused_calls,
                                  "reused_conversations": engine.reused_conversations})


# The Prefect task: cached on the config sections read and the input artifacts' hashes.
rollout_task = stage_task(rollout_stage, name="rollout", sections=SECTIONS,
                          gpu=True, retries=1)
