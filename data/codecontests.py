"""CodeContests (DeepMind, `deepmind/code_contests`) problems: stdin/stdout contest tasks.

Prompt = the `description`; public = the `public_tests` cases; private = public + `private_tests`
+ `generated_tests` cases, all as `run_stdio_cases` calls (see `stdio_harness`; a problem's
code and tests become a runnable program through `stdio_program`, not by concatenation). The
solution is the first correct solution in Python 3 (`language` 3 in the hub schema), else "".
A problem the hub gives no public tests keeps an empty public case list. The entry point is ""
(a whole program is asked for). This module does not read the hub.
"""

from __future__ import annotations

from typing import Any

from mucode.data.errors import DatasetError
from mucode.data.records import Record, require_fields
from mucode.data.schema import Problem
from mucode.data.stdio_harness import stdio_tests_source

# `solutions.language` values in the hub schema: 0 unknown, 1 Python 2, 2 C++, 3 Python 3, 4 Java.
PYTHON3 = 3

CODECONTESTS_FIELDS: dict[str, type] = {
    "name": str,
    "description": str,
    "public_tests": dict,
    "private_tests": dict,
    "generated_tests": dict,
    "solutions": dict,
}


def check_codecontests_record(record: Record, where: str) -> None:
    require_fields(record, CODECONTESTS_FIELDS, where)
    for field in ("public_tests", "private_tests", "generated_tests"):
        stdio_cases(record[field], f"{where} field {field!r}")
    _paired(record["solutions"], ("language", "solution"), f"{where} field 'solutions'")


def codecontests_problem(record: Record, split: str, index: int) -> Problem:
    public = stdio_cases(record["public_tests"], "public_tests")
    private = stdio_cases(record["private_tests"], "private_tests")
    generated = stdio_cases(record["generated_tests"], "generated_tests")
    return Problem(
        task_id=f"codecontests/{split}/{index}",
        dataset="codecontests",
        split=split,
        prompt=record["description"].strip(),
        public_tests=stdio_tests_source(public),
        private_tests=stdio_tests_source(public + private + generated),
        solution=first_python3_solution(record["solutions"]),
        entry_point="",
    )


def stdio_cases(tests: dict[str, Any], where: str) -> list[tuple[str, str]]:
    """The (input, output) pairs of a hub test field `{"input": [...], "output": [...]}`."""
    inputs, outputs = _paired(tests, ("input", "output"), where)
    if not all(isinstance(text, str) for text in inputs + outputs):
        raise DatasetError(f"{where}: every test input and output must be a string; fix the row")
    return list(zip(inputs, outputs))


def first_python3_solution(solutions: dict[str, Any]) -> str:
    languages, sources = _paired(solutions, ("language", "solution"), "solutions")
    return next((source for language, source in zip(languages, sources) if language == PYTHON3), "")


def _paired(mapping: dict[str, Any], keys: tuple[str, str], where: str) -> tuple[list[Any], list[Any]]:
    first, second = (mapping.get(key) for key in keys)
    if not isinstance(first, list) or not isinstance(second, list) or len(first) != len(second):
        raise DatasetError(
            f"{where} must map {keys[0]!r} and {keys[1]!r} to lists of equal length; fix the row or download it again"
        )
    return first, second
