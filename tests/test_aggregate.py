"""aggregate(): union over iterations, iteration tags, earliest copy of a repeated turn kept."""

import json

import polars as pl
import pytest

from mucode.tasks.aggregate import AggregateInputError, aggregate


def rows(task_ids, responses, *, rollout_ids=None, prompts=None, passed=None):
    n = len(task_ids)
    return pl.DataFrame({
        "task_id": task_ids,
        "rollout_id": rollout_ids or list(range(n)),
        "turn": [1] * n,
        "prompt_messages": prompts or [json.dumps([{"role": "user", "content": f"solve {t}"}]) for t in task_ids],
        "response": responses,
        "final": [True] * n,
        "oracle_passed": passed or [False] * n,
    })


def test_first_iteration_is_tagged_and_deduplicated_in_order():
    labelled = rows(["a", "a", "b", "a"], ["x", "y", "x", "x"], passed=[True, False, False, False])
    result = aggregate(None, labelled, iteration=0)
    assert result["iteration"].dtype == pl.Int64
    # The 4th row repeats the 1st (same task, prompt, response): the earlier one stays.
    assert result.select("task_id", "response", "rollout_id", "oracle_passed").rows() == [
        ("a", "x", 0, True), ("a", "y", 1, False), ("b", "x", 2, False)]
    assert result["iteration"].to_list() == [0, 0, 0]


def test_later_iteration_keeps_earliest_copy_and_adds_new_turns():
    first = aggregate(None, rows(["a", "b"], ["x", "y"]), iteration=0)
    second = rows(["a", "a", "b"], ["x", "z", "y"], rollout_ids=[7, 8, 9])
    result = aggregate(first, second, iteration=1)
    assert result.select("task_id", "response", "iteration", "rollout_id").rows() == [
        ("a", "x", 0, 0), ("b", "y", 0, 1), ("a", "z", 1, 8)]


def test_same_answer_to_a_different_prefix_is_kept():
    prompts = [json.dumps([{"role": "user", "content": "p"}]),
               json.dumps([{"role": "user", "content": "p"}, {"role": "assistant", "content": "x"},
                           {"role": "user", "content": "Feedback: no"}])]
    result = aggregate(None, rows(["a", "a"], ["x", "x"], prompts=prompts), iteration=0)
    assert result.height == 2


def test_extra_column_in_a_later_iteration_is_kept_with_nulls_before():
    first = aggregate(None, rows(["a"], ["x"]), iteration=0)
    second = rows(["a"], ["y"]).with_columns(pl.lit("v2").alias("generator"))
    result = aggregate(first, second, iteration=1)
    assert result["generator"].to_list() == [None, "v2"]


def test_missing_columns_are_named():
    with pytest.raises(AggregateInputError, match=r"lack columns \['oracle_passed'\].*execute stage"):
        aggregate(None, rows(["a"], ["x"]).drop("oracle_passed"), iteration=0)


def test_empty_iteration_is_rejected():
    with pytest.raises(AggregateInputError, match="iteration 2 has no labelled rollouts"):
        aggregate(None, rows(["a"], ["x"]).head(0), iteration=2)


def test_previous_without_iteration_column_is_rejected():
    with pytest.raises(AggregateInputError, match="no 'iteration' column"):
        aggregate(rows(["a"], ["x"]), rows(["b"], ["y"]), iteration=1)
