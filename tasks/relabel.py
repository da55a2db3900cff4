"""Relabel: turn the aggregated rollouts into the SFT dataset of one training policy.

µCode's local search expert picks, for each problem, the best of all aggregated *final*
answers by β_O · oracle + β_L · verifier and makes it the target of every conversation
prefix of that problem (also where nothing passed). The baselines of the paper are here
too, selected by `RelabelConfig.policy`:

- `mucode`: every aggregated turn's prefix → the expert's answer.
- `oracle` (Multi-STaR²): the same with the oracle alone; problems where no final answer
  passes give nothing. Ties between passing answers go to the earliest (iteration,
  rollout_id, turn, then response text), so the choice is deterministic.
- `mucode-r`: the `mucode` rows followed by the `oracle` rows.
- `mucode-solved` (a diagnostic, not in the paper): the `mucode` rows of the problems whose
  expert answer passes, so the verifier only ranks passing answers. Against `mucode` it
  shows what the unsolved problems' (failing) targets do; against `oracle`, what the
  verifier's ranking among passing answers does.
- `rft` (Multi-STaR): every turn of every trajectory whose final turn passes the oracle,
  each with its own answer as the target.
- `single-turn-rft`: first-turn answers that pass the oracle.

Every target is "```python\\n{code}\\n```" of the chosen answer: the code the environment
executes, no marker string. Rows keep the aggregate's order. This module trains nothing and
scores nothing: verifier scores come in as a frame (task_id, response, verifier_score).
"""

from __future__ import annotations

from mucode.orchestration import stage_task

import json
import math

import polars as pl

from mucode.columns import require_columns
from mucode.config import VERIFIER_POLICIES, RelabelConfig
from mucode.prompts import extract_code

AGGREGATE_COLUMNS = ("task_id", "rollout_id", "turn", "prompt_messages", "response", "final", "oracle_passed",
                     "iteration")
SCORE_COLUMNS = ("task_id", "response", "verifier_score")
SFT_SCHEMA = {
    "task_id": pl.String,
    "prompt_messages": pl.String,
    "completion": pl.String,
    "policy": pl.String,
    "target_oracle_passed": pl.Boolean,
    "target_score": pl.Float64,
}
# Earliest first: the deterministic tie-break between equally scored answers.
EARLIEST_FIRST = ["iteration", "rollout_id", "turn", "response"]


class RelabelInputError(ValueError):
    """The aggregate or the scores cannot be relabelled; the message is one line."""


def relabel(aggregated: pl.DataFrame, scores: pl.DataFrame | None, cfg: RelabelConfig) -> pl.DataFrame:
    """The SFT dataset of `cfg.policy` (columns `SFT_SCHEMA`)."""
    _check_aggregate(aggregated)
    if cfg.policy == "mucode":
        return mucode_dataset(aggregated, _checked_scores(scores, cfg.policy), cfg)
    if cfg.policy == "oracle":
        return oracle_dataset(aggregated, cfg)
    if cfg.policy == "mucode-solved":
        return mucode_dataset(aggregated, _checked_scores(scores, cfg.policy), cfg, solved_only=True)
    if cfg.policy == "mucode-r":
        mucode_rows = mucode_dataset(aggregated, _checked_scores(scores, cfg.policy), cfg)
        return pl.concat([mucode_rows, oracle_dataset(aggregated, cfg)])
    if cfg.policy == "rft":
        return rft_dataset(aggregated)
    return single_turn_rft_dataset(aggregated)


def fenced_code(answer: str) -> str:
    """The SFT target for an answer: its executed code in one python fence."""
    return f"```python\n{extract_code(answer)}\n```"


def expert_targets(aggregated: pl.DataFrame, scores: pl.DataFrame, beta_oracle: float,
                   beta_verifier: float) -> pl.DataFrame:
    """Per problem, the best final answer by β_O·oracle + β_L·verifier (ties: earliest).

    Columns: task_id, target_response, target_oracle_passed, target_score.
    """
    unique_scores = scores.select(SCORE_COLUMNS).unique(subset=["task_id", "response"], keep="first")
    finals = aggregated.filter(pl.col("final")).join(unique_scores, on=["task_id", "response"], how="left")
    unscored = finals.filter(pl.col("verifier_score").is_null())
    if unscored.height:
        raise RelabelInputError(
            f"{unscored.height} final answers have no verifier score (e.g. task {unscored['task_id'][0]!r}): "
            "score every final answer of the aggregate (verifier.score_final_answers)"
        )
    scored = finals.with_columns(
        (beta_oracle * pl.col("oracle_passed").cast(pl.Float64) + beta_verifier * pl.col("verifier_score"))
        .alias("target_score")
    )
    return _best_per_task(scored, by_score=True)


def oracle_targets(aggregated: pl.DataFrame, beta_oracle: float) -> pl.DataFrame:
    """Per problem with a passing final answer, the earliest one; other problems are absent."""
    passing = aggregated.filter(pl.col("final") & pl.col("oracle_passed"))
    return _best_per_task(passing.with_columns(pl.lit(beta_oracle, dtype=pl.Float64).alias("target_score")),
                          by_score=False)


def mucode_dataset(aggregated: pl.DataFrame, scores: pl.DataFrame, cfg: RelabelConfig,
                   solved_only: bool = False) -> pl.DataFrame:
    """Every prefix → its problem's expert answer; `solved_only`: only where that answer passes."""
    targets = expert_targets(aggregated, scores, cfg.beta_oracle, cfg.beta_verifier)
    if solved_only:
        targets = targets.filter(pl.col("target_oracle_passed"))
    return _prefixes_with_targets(aggregated, targets, "mucode-solved" if solved_only else "mucode")


def oracle_dataset(aggregated: pl.DataFrame, cfg: RelabelConfig) -> pl.DataFrame:
    return _prefixes_with_targets(aggregated, oracle_targets(aggregated, cfg.beta_oracle), "oracle")


def rft_dataset(aggregated: pl.DataFrame) -> pl.DataFrame:
    """Each turn (with its own answer) of every trajectory whose final turn passes the oracle.

    A trajectory is read back from its final row's conversation, so a turn that aggregation
    deduplicated against another rollout is still found (as that identical row), once.
    """
    rows = aggregated.with_row_index("_order")
    columns = rows.select("_order", "task_id", "prompt_messages", "response")
    row_by_conversation = {
        (task_id, _conversation_key(json.loads(prompt) + [_assistant(response)])): order
        for order, task_id, prompt, response in columns.iter_rows()
    }
    selected: set[int] = set()
    successes = rows.filter(pl.col("final") & pl.col("oracle_passed"))
    for task_id, prompt, response in successes.select("task_id", "prompt_messages", "response").iter_rows():
        conversation = json.loads(prompt) + [_assistant(response)]
        for end, message in enumerate(conversation, start=1):
            if message["role"] != "assistant":
                continue
            order = row_by_conversation.get((task_id, _conversation_key(conversation[:end])))
            if order is None:
                raise RelabelInputError(
                    f"task {task_id!r}: turn {(end + 1) // 2} of a successful trajectory is missing from the "
                    "aggregate: pass the whole aggregate, not a filtered part"
                )
            selected.add(order)
    own_answers = rows.filter(pl.col("_order").is_in(sorted(selected))).sort("_order")
    return _own_answer_rows(own_answers, "rft")


def single_turn_rft_dataset(aggregated: pl.DataFrame) -> pl.DataFrame:
    """First-turn answers that pass the oracle, prompted by the first user message alone."""
    first_turn_passes = aggregated.filter((pl.col("turn") == 1) & pl.col("oracle_passed"))
    return _own_answer_rows(first_turn_passes, "single-turn-rft")


def _best_per_task(candidates: pl.DataFrame, *, by_score: bool) -> pl.DataFrame:
    order = (["target_score"] if by_score else []) + EARLIEST_FIRST
    descending = ([True] if by_score else []) + [False] * len(EARLIEST_FIRST)
    best = candidates.sort(order, descending=descending).unique(subset=["task_id"], keep="first", maintain_order=True)
    return best.select(
        "task_id",
        pl.col("response").alias("target_response"),
        pl.col("oracle_passed").alias("target_oracle_passed"),
        pl.col("target_score").cast(pl.Float64),
    )


def _prefixes_with_targets(aggregated: pl.DataFrame, targets: pl.DataFrame, policy: str) -> pl.DataFrame:
    """Every aggregated row's prefix paired with its problem's target (problems without one drop out)."""
    joined = aggregated.with_row_index("_order").join(targets, on="task_id", how="inner").sort("_order")
    return pl.DataFrame(
        {
            "task_id": joined["task_id"],
            "prompt_messages": joined["prompt_messages"],
            "completion": [fenced_code(answer) for answer in joined["target_response"]],
            "policy": [policy] * joined.height,
            "target_oracle_passed": joined["target_oracle_passed"],
            "target_score": joined["target_score"],
        },
        schema=SFT_SCHEMA,
    )


def _own_answer_rows(rows: pl.DataFrame, policy: str) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "task_id": rows["task_id"],
            "prompt_messages": rows["prompt_messages"],
            "completion": [fenced_code(answer) for answer in rows["response"]],
            "policy": [policy] * rows.height,
            "target_oracle_passed": rows["oracle_passed"],
            "target_score": [math.nan] * rows.height,
        },
        schema=SFT_SCHEMA,
    )


def _assistant(answer: str) -> dict[str, str]:
    return {"role": "assistant", "content": answer}


def _conversation_key(messages: list[dict[str, str]]) -> str:
    # Canonical JSON, so keys match however the rollout stage spaced its JSON.
    return json.dumps(messages, ensure_ascii=False, sort_keys=True)


def _check_aggregate(aggregated: pl.DataFrame) -> None:
    require_columns(aggregated, AGGREGATE_COLUMNS, RelabelInputError, "the aggregate",
                    "pass the output of the aggregate stage")
    if aggregated.height == 0:
        raise RelabelInputError("the aggregate is empty: run the rollout, execute and aggregate stages first")


def _checked_scores(scores: pl.DataFrame | None, policy: str) -> pl.DataFrame:
    if scores is None:
        raise RelabelInputError(
            f"relabel policy {policy!r} needs verifier scores: train the verifier and pass its scores frame"
        )
    require_columns(scores, SCORE_COLUMNS, RelabelInputError, "the scores frame", f"expected {list(SCORE_COLUMNS)}")
    return scores


# The config sections the stage reads: its cache key and its manifest's config hash.
SECTIONS = ("relabel", "verifier")


def relabel_stage(cfg, root: str, aggregated, problems, verifier):
    """Store-level stage: the SFT dataset of the configured policy (verifier None: oracle-only policies)."""
    from mucode.artifacts import ArtifactStore
    from mucode.verifier_scorer import VerifierScorer, score_final_answers

    store = ArtifactStore(root)
    frame = store.get_frame(aggregated)
    scores = None
    if verifier is not None and cfg.relabel.policy in VERIFIER_POLICIES:
        scorer = VerifierScorer(store.get_dir(verifier), max_length=cfg.verifier.max_length)
        scores = score_final_answers(scorer, frame, store.get_frame(problems))
    sft = relabel(frame, scores, cfg.relabel)
    metrics = {"examples": sft.height, "problems": sft["task_id"].n_unique(),
               "target_pass_rate": float(sft["target_oracle_passed"].mean() or 0.0) if sft.height else 0.0}
    inputs = [aggregated.hash, problems.hash] + ([verifier.hash] if verifier is not None else [])
    return store.put_frame(sft, stage="relabel", config_hash=cfg.section_digest(*SECTIONS),
                           inputs=inputs, extra={"policy": cfg.relabel.policy, "metrics": metrics})


# The Prefect task: cached on the config sections read and the input artifacts' hashes.
relabel_task = stage_task(relabel_stage, name="relabel", sections=SECTIONS)
