"""MBPP problems with the paper's public / private tests (and none of the release's defects).

Evaluation splits (prompt, test, validation): public = `test_setup_code` + the first assert of
`test_list`; private = `test_setup_code` + every assert of `test_list` + every assert of
`challenge_test_list`, each as its own statement (the release appended the challenge list as
the text of a list, which asserts nothing). Training split: public = setup + all of
`test_list`; private = the same + the challenge asserts. The prompt is the problem `text`
only; the solution is the canonical `code`. This module does not read files (see `loader`).
"""

from __future__ import annotations

import ast
from collections.abc import Sequence

from mucode.data.errors import DatasetError
from mucode.data.python_source import parse_module
from mucode.data.records import Record, require_fields
from mucode.data.schema import Problem, join_code, normalise_newlines
from mucode.data.splits import is_training_split, mbpp_split_of

MBPP_FIELDS: dict[str, type] = {
    "task_id": int,
    "text": str,
    "code": str,
    "test_setup_code": str,
    "test_list": list,
    "challenge_test_list": list,
}


def check_mbpp_record(record: Record, where: str) -> None:
    require_fields(record, MBPP_FIELDS, where)
    try:
        mbpp_split_of(record["task_id"])
    except DatasetError as error:
        raise DatasetError(f"{where}: {error}") from None
    if not record["test_list"]:
        raise DatasetError(f"{where}: 'test_list' is empty, so there is no public test; fix the row")


def mbpp_records_of_split(records: Sequence[Record], split: str) -> list[Record]:
    """The records of `split`, by task id."""
    chosen = [record for record in records if mbpp_split_of(record["task_id"]) == split]
    return sorted(chosen, key=lambda record: record["task_id"])


def mbpp_problem(record: Record, split: str, dataset: str = "mbpp") -> Problem:
    setup = normalise_newlines(record["test_setup_code"])
    asserts = [normalise_newlines(test) for test in record["test_list"]]
    challenge = [normalise_newlines(test) for test in record["challenge_test_list"]]
    solution = normalise_newlines(record["code"])
    shown = asserts if is_training_split(split) else asserts[:1]
    return Problem(
        task_id=f"{dataset}/{record['task_id']}",
        dataset=dataset,
        split=split,
        prompt=normalise_newlines(record["text"]).strip(),
        public_tests=join_code(setup, *shown),
        private_tests=join_code(setup, *asserts, *challenge),
        solution=solution,
        entry_point=entry_point_of(solution, asserts),
    )


def entry_point_of(solution: str, asserts: Sequence[str]) -> str:
    """The first function the asserts call that the solution defines ("" if none is found)."""
    defined = _defined_functions(solution)
    for test in asserts:
        for name in _called_names(test):
            if name in defined:
                return name
    return ""


def _defined_functions(code: str) -> set[str]:
    tree = parse_module(code)
    if tree is None:
        return set()
    return {node.name for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}


def _called_names(code: str) -> list[str]:
    tree = parse_module(code)
    if tree is None:
        return []
    calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)]
    # Source order, so the outermost call of `assert f(g(x)) == y` comes first.
    calls.sort(key=lambda node: (node.lineno, node.col_offset))
    return [call.func.id for call in calls]
