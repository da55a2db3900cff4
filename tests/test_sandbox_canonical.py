"""Honest verdicts on real code: all 1,138 canonical solutions (MBPP 974, HumanEval 164)
pass on both backends, and the same solutions with their entry function made to return a
wrong value all fail."""

import collections
from pathlib import Path

import polars as pl
import pytest
from mucode.data import load_problems

from mucode.sandbox import Program, make_sandbox
from sandbox_support import require_docker

MBPP_SPLITS = ("prompt", "test", "validation", "train")
# Generous: one MBPP solution burns ~4 s of CPU, and other suites share these 2 cores.
TIMEOUT_S = 30.0
# Appended after the solution: the entry point now returns a value that equals nothing
# (== and != are both False), has no truth value (so `assert f(x)` and `assert not f(x)`
# both fail), supports no arithmetic, iteration, hashing or ordering, and the original
# function never runs (so tests of in-place effects fail too).
WRONG_VALUE = """

class _WrongValue:
    def __eq__(self, other):
        return False

    def __ne__(self, other):
        return False

    def __bool__(self):
        raise TypeError("this value has no truth value")

    __hash__ = None


def {name}(*args, **kwargs):
    return _WrongValue()
"""


def canonical_problems(data_dir: Path) -> pl.DataFrame:
    frames = [load_problems("mbpp", split, data_dir=data_dir) for split in MBPP_SPLITS]
    frames.append(load_problems("humaneval", "test", data_dir=data_dir))
    return pl.concat(frames)


def canonical_programs(problems: pl.DataFrame) -> list[Program]:
    return [Program(row["task_id"], row["solution"], row["private_tests"]) for row in problems.iter_rows(named=True)]


def wrong_value_programs(problems: pl.DataFrame) -> list[Program]:
    return [
        Program(row["task_id"], row["solution"] + WRONG_VALUE.format(name=row["entry_point"]), row["private_tests"])
        for row in problems.iter_rows(named=True)
    ]


pytestmark = pytest.mark.slow  # 1,138 programs (twice) through each sandbox


@pytest.fixture(scope="module")
def problems(data_dir) -> pl.DataFrame:
    table = canonical_problems(data_dir)
    assert table.height == 1138 and table["entry_point"].str.len_chars().min() > 0
    return table


@pytest.fixture(scope="module", params=["local", pytest.param("docker", marks=pytest.mark.docker)])
def sandbox(request):
    if request.param == "docker":
        require_docker()
    with make_sandbox(request.param, timeout_s=TIMEOUT_S, memory_mb=1024) as started:
        yield started


def test_every_canonical_solution_passes(sandbox, problems):
    verdicts = sandbox.run(canonical_programs(problems))
    failures = [(verdict.id, verdict.status, verdict.feedback[-300:]) for verdict in verdicts if not verdict.passed]
    assert failures == []
    assert len(verdicts) == 1138 and all(verdict.feedback == "" for verdict in verdicts)


def test_every_solution_returning_a_wrong_value_fails(sandbox, problems):
    verdicts = sandbox.run(wrong_value_programs(problems))
    assert [verdict.id for verdict in verdicts if verdict.passed] == []
    statuses = collections.Counter(verdict.status for verdict in verdicts)
    assert set(statuses) <= {"failed", "error"}, statuses
    assert statuses["failed"] > 0.95 * len(verdicts), statuses  # mostly caught by an assert
