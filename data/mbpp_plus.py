"""MBPP+ (EvalPlus `evalplus/mbppplus`) problems: MBPP's tasks with many more private tests.

A hub row has `task_id`, `code`, `prompt` (a docstring: the task text and one assert),
`test_imports`, `test_list` (the base asserts) and `test`: a program that checks every base
and plus input against its expected result through an `assertion(out, exp, atol)` helper that
raises `AssertionError`. Public = the imports + the first base assert (MBPP+ is an evaluation
set); private = the imports + every base assert + the `test` program. The prompt is the task
text without the docstring quotes and the assert. This module does not read the hub.
"""

from __future__ import annotations

from mucode.data.errors import DatasetError
from mucode.data.mbpp import entry_point_of
from mucode.data.records import Record, require_fields
from mucode.data.schema import Problem, join_code, normalise_newlines

MBPP_PLUS_FIELDS: dict[str, type] = {
    "task_id": int,
    "code": str,
    "prompt": str,
    "test_imports": list,
    "test_list": list,
    "test": str,
}


def check_mbpp_plus_record(record: Record, where: str) -> None:
    require_fields(record, MBPP_PLUS_FIELDS, where)
    if not record["test_list"]:
        raise DatasetError(f"{where}: 'test_list' is empty, so there is no public test; fix the row")
    try:
        compile(record["test"], f"<{where} test>", "exec")
    except SyntaxError as error:
        raise DatasetError(f"{where}: the 'test' program does not compile ({error.msg}, line {error.lineno})") from None


def mbpp_plus_problem(record: Record, split: str = "test") -> Problem:
    imports = "\n".join(record["test_imports"])
    asserts = [normalise_newlines(test) for test in record["test_list"]]
    solution = normalise_newlines(record["code"])
    return Problem(
        task_id=f"mbpp-plus/{record['task_id']}",
        dataset="mbpp-plus",
        split=split,
        prompt=task_text(record["prompt"]),
        public_tests=join_code(imports, asserts[0]),
        private_tests=join_code(imports, *asserts, normalise_newlines(record["test"])),
        solution=solution,
        entry_point=entry_point_of(solution, asserts),
    )


def task_text(prompt: str) -> str:
    """The task sentence of an MBPP+ prompt: no docstring quotes, no assert lines."""
    lines = normalise_newlines(prompt).strip().splitlines()
    kept = [line for line in lines if line.strip() not in ('"""', "'''") and not line.lstrip().startswith("assert ")]
    return "\n".join(kept).strip().strip('"').strip("'").strip()
