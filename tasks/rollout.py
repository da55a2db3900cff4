"""Rollout stage: run the generator in the multi-turn code environment.

For every problem, K rollouts of up to T turns. All live trajectories of all problems advance
together: each turn, every unfinished trajectory contributes one generation request, and the
turn's programs (each answer's code on the public tests, for feedback, and on the oracle
tests, for the stop rule and the record) go to the sandbox as one batch. Training rollouts
stop once a turn passes public and private tests; evaluation-mode rollouts run all T turns.

Writes one row per turn (schema in docs/architecture.md). It does not label data for
training (that is the execute stage) and does not choose among samples (that is evaluation).
"""

from __future__ import annotations

from mucode.orchestration import stage_task

import json
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import polars as pl

from mucode.columns import require_columns
from mucode.engines import SamplingParams
from mucode.environment import Mode, Trajectory, extend_conversation, initial_conversation, is_finished
from mucode.prompts import feedback_text
from mucode.data.programs import sandbox_program

ROLLOUT_SCHEMA = {
    "task_id": pl.String, "rollout_id": pl.Int64, "turn": pl.Int64, "prompt_messages": pl.String,
    "response": pl.String, "code": pl.String, "public_passed": pl.Boolean, "feedback": pl.String,
    "private_passed": pl.Boolean, "final": pl.Boolean, "generator": pl.String,
    "temperature": pl.Float64, "top_p": pl.Float64, "max_new_tokens": pl.Int64, "seed": pl.Int64,
}
REQUIRED_PROBLEM_COLUMNS = ("task_id", "dataset", "prompt", "public_tests", "private_tests")


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


def check_problems(problems: pl.DataFrame) -> None:
    require_columns(problems, REQUIRED_PROBLEM_COLUMNS, RolloutInputError, "problems frame", "build it with `mucode data`")
    if problems.height == 0:
        raise RolloutInputError("no problems to roll out: check the dataset split and --limit")
    if problems["task_id"].n_unique() != problems.height:
        raise RolloutInputError("problems frame has duplicate task_id values: deduplicate it first")


def turn_seed(seed: int, turn: int) -> int:
    # Each turn samples with its own seed so that a rerun reproduces every turn.
    return seed * 1_000 + turn


def generate_turn(engine, trajectories: Sequence[Trajectory], turn: int, num_rollouts: int,
                  sampling: SamplingParams, chunk_size: int,
                  on_chunk: Callable[[int], None]) -> list[str]:
    """One answer for each live trajectory, in order.

    On turn 1 every rollout of a problem shares the same conversation, so one request with
    n = K samples per problem is sent (the engine shares the prompt); later turns differ.
    Seed streams (`mucode.engines.sampling`): rollout r of a problem is sample r of the
    stream `<task>/turn-1`, then the only sample of `<task>/rollout-r/turn-t`, so identical
    conversations never repeat a sample, whatever the chunk size.
    """
    seeded = SamplingParams(temperature=sampling.temperature, top_p=sampling.top_p,
                            max_new_tokens=sampling.max_new_tokens, seed=turn_seed(sampling.seed, turn))
    if turn == 1:
        firsts = trajectories[::num_rollouts]
        answers: list[str] = []
        step = max(1, chunk_size // num_rollouts)
        for start in range(0, len(firsts), step):
            chunk = firsts[start:start + step]
            streams = [f"{t.task_id}/turn-1" for t in chunk]
            for samples in engine.generate([t.conversation for t in chunk], num_rollouts, seeded, streams=streams):
                answers.extend(samples)
            on_chunk(len(chunk) * num_rollouts)
        return answers
    answers = []
    for start in range(0, len(trajectories), chunk_size):
        chunk = trajectories[start:start + chunk_size]
        streams = [f"{t.task_id}/rollout-{t.rollout_id}/turn-{turn}" for t in chunk]
        answers.extend(samples[0] for samples in engine.generate([t.conversation for t in chunk], 1, seeded,
                                                                 streams=streams))
        on_chunk(len(chunk))
    return answers


def judge_turn(sandbox, trajectories: Sequence[Trajectory], problem_of: dict[str, dict[str, str]]):
    """Public and oracle verdicts for each trajectory's latest code, in one sandbox batch."""
    programs = []
    for index, trajectory in enumerate(trajectories):
        problem = problem_of[trajectory.task_id]
        programs.append(sandbox_program(f"{index}:public", problem, trajectory.code, problem["public_tests"]))
        programs.append(sandbox_program(f"{index}:private", problem, trajectory.code, problem["private_tests"]))
    verdicts = sandbox.run(programs)
    return verdicts[0::2], verdicts[1::2]


def run_rollouts(problems: pl.DataFrame, engine, sandbox, *, num_rollouts: int, max_turns: int,
                 sampling: SamplingParams, mode: Mode = "train", generator_hash: str = "",
                 chunk_size: int = 64, progress: ProgressCallback | None = None) -> pl.DataFrame:
    """K rollouts of up to T turns for every problem; one row per turn."""
    check_problems(problems)
    problem_of = {row["task_id"]: row for row in problems.iter_rows(named=True)}
    trajectories = [
        Trajectory(row["task_id"], rollout_id,
                   initial_conversation(row["prompt"], row["public_tests"], row["dataset"]))
        for row in problems.iter_rows(named=True) for rollout_id in range(num_rollouts)
    ]
    rows: list[dict] = []
    stats = RolloutStats()
    for turn in range(1, max_turns + 1):
        live = [t for t in trajectories if not t.finished]
        if not live:
            break
        stats.turn, stats.live, stats.done_in_turn = turn, len(live), 0

        def advance(count: int) -> None:
            stats.done_in_turn += count
            if progress:
                progress(stats)

        tokens_before, started = engine.tokens_generated, time.perf_counter()
        answers = generate_turn(engine, live, turn, num_rollouts, sampling, chunk_size, advance)
        stats.generation_s += time.perf_counter() - started
        stats.tokens += engine.tokens_generated - tokens_before

        prefixes = [json.dumps(t.conversation) for t in live]
        for trajectory, answer in zip(live, answers):
            trajectory.answers.append(answer)
        started = time.perf_counter()
        public, private = judge_turn(sandbox, live, problem_of)
        stats.execution_s += time.perf_counter() - started

        for trajectory, prefix, public_verdict, private_verdict in zip(live, prefixes, public, private):
            text = feedback_text(public_verdict.passed, public_verdict.feedback)
            trajectory.finished = is_finished(mode, turn, max_turns, public_verdict.passed, private_verdict.passed)
            rows.append({
                "task_id": trajectory.task_id, "rollout_id": trajectory.rollout_id, "turn": turn,
                "prompt_messages": prefix, "response": trajectory.answers[-1], "code": trajectory.code,
                "public_passed": public_verdict.passed, "feedback": text,
                "private_passed": private_verdict.passed, "final": trajectory.finished,
                "generator": generator_hash, "temperature": sampling.temperature, "top_p": sampling.top_p,
                "max_new_tokens": sampling.max_new_tokens, "seed": sampling.seed,
            })
            if not trajectory.finished:
                trajectory.conversation = extend_conversation(
                    trajectory.conversation, trajectory.answers[-1], public_verdict.passed, public_verdict.feedback)
        if progress:
            progress(stats)
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


def rollout_stage(cfg, root: str, problems, generator, iteration: int):
    """Store-level stage: roll out `generator` (None = the base model) on stored problems."""
    from mucode.artifacts import ArtifactStore
    from mucode.progress import rollout_progress
    from mucode.resources import make_engine_from_config, make_sandbox_from_config, model_hash, model_path, sampling_params

    store = ArtifactStore(root)
    frame = store.get_frame(problems)
    generator_hash = model_hash(cfg, generator)
    sampling = sampling_params(cfg.rollout.sampling, seed=cfg.seed * 100 + iteration)
    with make_engine_from_config(cfg, model_path(cfg, store, generator)) as engine, \
            make_sandbox_from_config(cfg) as sandbox, \
            rollout_progress(frame.height * cfg.rollout.num_rollouts, cfg.rollout.max_turns) as progress:
        rollouts = run_rollouts(frame, engine, sandbox, num_rollouts=cfg.rollout.num_rollouts,
                                max_turns=cfg.rollout.max_turns, sampling=sampling, mode="train",
                                generator_hash=generator_hash, chunk_size=4 * cfg.engine.batch_size,
                                progress=progress)
    return store.put_frame(rollouts, stage="rollout",
                           config_hash=cfg.section_digest("model", "engine", "rollout", "seed"),
                           inputs=[problems.hash, generator_hash],
                           extra={"iteration": iteration, "metrics": summarize_rollouts(rollouts)})


# The Prefect task: cached on the config sections read and the input artifacts' hashes.
rollout_task = stage_task(rollout_stage, name="rollout", sections=("model", "engine", "rollout", "sandbox", "seed"),
                          gpu=True, retries=1)
