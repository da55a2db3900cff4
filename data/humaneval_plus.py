"""HumanEval+ (EvalPlus `evalplus/humanevalplus`) problems: HumanEval with many more tests.

A hub row has HumanEval's fields; its `test` defines `check(candidate)` over the base and
plus inputs through an `assertion(out, exp, atol)` helper that raises `AssertionError`.
Public = one docstring example, as for HumanEval (the fallback assert is looked for in the
base HumanEval suite, whose asserts stand alone; the plus suite checks inputs in a loop);
private = the docstring asserts + the plus `test` + `check(entry_point)`. This module does
not read the hub.
"""

from __future__ import annotations

from collections.abc import Mapping

from mucode.data.errors import DatasetError
from mucode.data.humaneval import humaneval_problem
from mucode.data.records import Record
from mucode.data.schema import Problem


def humaneval_plus_problem(record: Record, base_tests: Mapping[str, str], split: str = "test") -> Problem:
    """One problem; `base_tests` maps HumanEval task ids to the base `test` source."""
    if record["task_id"] not in base_tests:
        raise DatasetError(
            f"HumanEval+ task {record['task_id']!r} is not a HumanEval task; use the evalplus/humanevalplus release"
        )
    return humaneval_problem(
        record,
        dataset="humaneval-plus",
        split=split,
        base_check_source=base_tests[record["task_id"]],
    )
