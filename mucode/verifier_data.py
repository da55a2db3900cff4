"""What a verifier reads and learns from: its input text, its samples and its preference pairs.

The input is the tokenizer's chat template over [user: first user message, assistant:
answer] (`verifier_text`, the same at train and score time), not the conversation history.
Samples are every aggregated assistant turn, labelled with the rollout's oracle outcome on
the final turn and 0 on earlier turns; problems are split into training and held-out ones;
Bradley–Terry pairs are (passing, failing) answers of one problem, drawn with a seeded RNG.
This module does not load models, train or score.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TYPE_CHECKING

import polars as pl

from mucode.columns import require_columns
from mucode.prompts import first_user_message

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

AGGREGATE_COLUMNS = ("task_id", "response", "final", "oracle_passed")
PROBLEM_COLUMNS = ("task_id", "dataset", "prompt", "public_tests")


class VerifierInputError(ValueError):
    """The data cannot train or be scored by a verifier; the message is one line."""


def verifier_text(tokenizer: PreTrainedTokenizerBase, prompt: str, answer: str) -> str:
    """What the verifier reads: the chat template over [user: prompt, assistant: answer]."""
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
    return tokenizer.apply_chat_template(messages, tokenize=False)


def verifier_input_ids(tokenizer: PreTrainedTokenizerBase, prompt: str, answer: str, max_length: int) -> list[int]:
    """Token ids of `verifier_text`, cut to the first `max_length` tokens.

    The template already holds the special tokens, so none are added again.
    """
    text = verifier_text(tokenizer, prompt, answer)
    return tokenizer(text, add_special_tokens=False, truncation=True, max_length=max_length)["input_ids"]


def problem_prompts(problems: pl.DataFrame) -> pl.DataFrame:
    """task_id → prompt: the first user message of each problem (what the verifier is shown)."""
    require_columns(problems, PROBLEM_COLUMNS, VerifierInputError, "the problems frame", "pass the problems the rollouts were made from")
    return problems.unique(subset=["task_id"], keep="first", maintain_order=True).select(
        "task_id",
        pl.struct("prompt", "public_tests", "dataset")
        .map_elements(lambda row: first_user_message(row["prompt"], row["public_tests"], row["dataset"]),
                      return_dtype=pl.String)
        .alias("prompt"),
    )


def with_prompts(rows: pl.DataFrame, problems: pl.DataFrame) -> pl.DataFrame:
    """`rows` (with task_id) plus each problem's prompt; unknown task ids are one clear error."""
    prompts = problem_prompts(problems)
    unknown = sorted(set(rows["task_id"]) - set(prompts["task_id"]))
    if unknown:
        raise VerifierInputError(
            f"the aggregate names {len(unknown)} task ids not in the problems frame (e.g. {unknown[0]}): "
            "pass the problems the rollouts were made from"
        )
    return rows.join(prompts, on="task_id", how="left", maintain_order="left")


def verifier_samples(aggregated: pl.DataFrame, problems: pl.DataFrame) -> pl.DataFrame:
    """One row per aggregated assistant turn: task_id, prompt, answer, label.

    prompt = the problem's first user message; label = the oracle outcome on a rollout's
    final turn, False on earlier turns.
    """
    require_columns(aggregated, AGGREGATE_COLUMNS, VerifierInputError, "the aggregate", "pass the output of the aggregate stage")
    if aggregated.height == 0:
        raise VerifierInputError("the aggregate is empty: run the rollout, execute and aggregate stages first")
    return with_prompts(aggregated, problems).select(
        "task_id",
        "prompt",
        pl.col("response").alias("answer"),
        (pl.col("final") & pl.col("oracle_passed")).alias("label"),
    )


def split_problems(task_ids: Sequence[str], heldout_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(train, held-out) task ids: a seeded shuffle; at least one problem stays in training."""
    unique_ids = sorted(set(task_ids))
    shuffled = unique_ids.copy()
    random.Random(seed).shuffle(shuffled)
    heldout_count = min(round(heldout_fraction * len(unique_ids)), max(len(unique_ids) - 1, 0))
    heldout = set(shuffled[:heldout_count])
    return [t for t in unique_ids if t not in heldout], [t for t in unique_ids if t in heldout]


def preference_pairs(samples: pl.DataFrame, pairs_per_problem: int, seed: int) -> pl.DataFrame:
    """(chosen = passing, rejected = failing) answer pairs of the same problem.

    Per problem (in task-id order) the distinct passing and failing answers are sorted; all
    pairs are kept when there are at most `pairs_per_problem`, otherwise that many distinct
    pairs are drawn with one RNG seeded by `seed`. Problems without both kinds give none.
    """
    rng = random.Random(seed)
    rows: list[tuple[str, str, str, str]] = []
    for (task_id,), group in samples.sort("task_id").group_by("task_id", maintain_order=True):
        passing = sorted(set(group.filter(pl.col("label"))["answer"]))
        failing = sorted(set(group.filter(~pl.col("label"))["answer"]) - set(passing))
        total = len(passing) * len(failing)
        if total == 0:
            continue
        picks = range(total) if total <= pairs_per_problem else sorted(rng.sample(range(total), pairs_per_problem))
        prompt = group["prompt"][0]
        rows += [(task_id, prompt, passing[i // len(failing)], failing[i % len(failing)]) for i in picks]
    return pl.DataFrame(rows, schema={"task_id": pl.String, "prompt": pl.String, "chosen": pl.String,
                                      "rejected": pl.String}, orient="row")
