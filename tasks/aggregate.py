"""Aggregate: the union of every iteration's labelled rollouts, one frame.

µCode trains the verifier and the generator on everything seen so far (D = D ∪ rollouts).
This module appends one iteration's labelled rollouts to the previous aggregate, tags
them with the iteration number, and drops exact repeats of a turn, keeping the earliest.
`aggregate` works on frames; `aggregate_stage` reads and writes them as artifacts. Neither
looks at what the turns contain.
"""

from __future__ import annotations

from mucode.orchestration import stage_task

import polars as pl

from mucode.columns import require_columns

DEDUP_KEY = ("task_id", "prompt_messages", "response")
REQUIRED_COLUMNS = (*DEDUP_KEY, "rollout_id", "turn", "final", "oracle_passed")


class AggregateInputError(ValueError):
    """The rollouts handed to `aggregate` cannot be aggregated; the message is one line."""


def aggregate(previous: pl.DataFrame | None, labelled: pl.DataFrame, iteration: int) -> pl.DataFrame:
    """`previous` ∪ `labelled` (tagged `iteration`), deduplicated on (task_id, prompt_messages, response).

    The earliest copy of a repeated turn is kept: lowest iteration first, then input order.
    """
    _check_columns(labelled, "labelled rollouts")
    if labelled.height == 0:
        raise AggregateInputError(
            f"iteration {iteration} has no labelled rollouts: run the rollout and execute stages first"
        )
    if previous is not None:
        _check_columns(previous, "previous aggregate")
        if "iteration" not in previous.columns:
            raise AggregateInputError("previous aggregate has no 'iteration' column: pass the output of aggregate()")
    tagged = labelled.with_columns(pl.lit(iteration, dtype=pl.Int64).alias("iteration"))
    # diagonal_relaxed: a later iteration may carry an extra column; missing values become null.
    union = tagged if previous is None else pl.concat([previous, tagged], how="diagonal_relaxed")
    earliest_first = union.with_row_index("_order").sort(["iteration", "_order"])
    return earliest_first.unique(subset=list(DEDUP_KEY), keep="first", maintain_order=True).drop("_order")


def _check_columns(frame: pl.DataFrame, name: str) -> None:
    require_columns(frame, REQUIRED_COLUMNS, AggregateInputError, name,
                    "pass the output of the execute stage (label_rollouts)", verb="lack")


def aggregate_stage(cfg, root: str, labelled, previous, iteration: int):
    """Store-level stage: add one iteration's labelled rollouts to the aggregate so far."""
    from mucode.artifacts import ArtifactStore

    store = ArtifactStore(root)
    frame = aggregate(store.get_frame(previous) if previous is not None else None, store.get_frame(labelled), iteration)
    finals = frame.filter(pl.col("final"))
    metrics = {"rows": frame.height, "rollouts": finals.height, "problems": frame["task_id"].n_unique(),
               "final_oracle_pass_rate": float(finals["oracle_passed"].mean() or 0.0)}
    inputs = [labelled.hash] + ([previous.hash] if previous is not None else [])
    return store.put_frame(frame, stage="aggregate", inputs=inputs, extra={"iteration": iteration, "metrics": metrics})


# The Prefect task: cached on the config sections read and the input artifacts' hashes.
aggregate_task = stage_task(aggregate_stage, name="aggregate", sections=())
