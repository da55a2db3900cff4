"""Tests of `mucode.data.verify`: the batch runner behind the dataset self-checks."""

from __future__ import annotations

import polars as pl

from mucode.data.verify import SolutionFailure, failing_solutions, run_programs


def test_run_programs_reports_each_outcome_in_input_order() -> None:
    programs = [
        "x = 1",
        "assert 1 == 2, 'one is not two'",
        "import sys\nsys.exit(0)",
        "import sys\nsys.exit(4)",
        "while True:\n    pass",
        "print('chatty')\nraise ValueError('boom')",
    ]
    results = run_programs(programs, workers=2, timeout_s=1.0)
    assert results[0] is None and results[2] is None
    assert "AssertionError: one is not two" in results[1]
    assert results[3] is not None and results[4] == "timed out after 1.0 s"
    assert "chatty" in results[5] and "ValueError: boom" in results[5]
    assert run_programs([]) == []


def test_programs_do_not_share_state() -> None:
    # Each program runs in its own process: a name defined by one is unknown to the next.
    results = run_programs(["shared = 1", "assert 'shared' not in globals()"], workers=1)
    assert results == [None, None]


def test_failing_solutions_names_the_problem_and_the_tests() -> None:
    frame = pl.DataFrame(
        {
            "task_id": ["t/1", "t/2", "t/3"],
            "dataset": ["mbpp"] * 3,
            "prompt": ["Write f."] * 3,
            "solution": ["def f():\n    return 1", "def f():\n    return 2", ""],
            "public_tests": ["assert f() == 1"] * 3,
            "private_tests": ["assert f() == 1\nassert f() > 0"] * 3,
        }
    )
    found = failing_solutions(frame)
    failed = [(failure.task_id, failure.tests_column) for failure in found]
    assert failed == [("t/2", "public_tests"), ("t/2", "private_tests")]
    assert all(isinstance(failure, SolutionFailure) and "AssertionError" in failure.error for failure in found)
