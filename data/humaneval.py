"""HumanEval problems with one public test taken from the prompt's docstring examples.

Public = one `assert` from the first docstring example that holds and that a function
returning None would fail (else the first that holds; see `docstring_examples`);
private = every such example as an assert + the official suite (`{test}` then
`check(entry_point)`). The prompt stays exactly as released (signature + docstring, examples
kept), so no function is left with an empty body (the release's defect). Where the docstring
has no checkable example, the public test is the official suite's first self-contained
assert; where there is none either, a hand-written one (see the tables below). The solution
is `prompt + canonical_solution`. This module does not read files (see `loader`).
"""

from __future__ import annotations

from dataclasses import dataclass

from mucode.data.check_asserts import first_check_assert
from mucode.data.docstring_examples import docstring_examples
from mucode.data.errors import DatasetError
from mucode.data.example_asserts import example_assert, holds_for_none
from mucode.data.records import Record, require_fields
from mucode.data.schema import Problem, join_code

HUMANEVAL_FIELDS: dict[str, type] = {
    "task_id": str,
    "prompt": str,
    "canonical_solution": str,
    "entry_point": str,
    "test": str,
}

CHECK_ORIGIN = "check"
HAND_WRITTEN_ORIGIN = "hand-written"

# Docstring examples that contradict the canonical solution and the official tests; as
# tests they would fail every correct program, so they are left out (task -> assert -> why).
WRONG_DOCSTRING_EXAMPLES: dict[str, dict[str, str]] = {
    "HumanEval/47": {
        "assert abs(median([-10, 4, 6, 1000, 10, 20]) - 15.0) < 1e-06": (
            "the median is 8.0; the official test asserts 8.0"
        ),
    },
    "HumanEval/116": {
        "assert sort_array([1, 5, 2, 3, 4]) == [1, 2, 3, 4, 5]": (
            "sorting by the count of ones gives [1, 2, 4, 3, 5], as the official test asserts"
        ),
        "assert sort_array([-2, -3, -4, -5, -6]) == [-6, -5, -4, -3, -2]": (
            "the official test asserts [-4, -2, -6, -5, -3]"
        ),
        "assert sort_array([1, 0, 2, 3, 4])[0, 1, 2, 3, 4] is None": "the docstring lost its `==`, leaving a subscript",
    },
    "HumanEval/130": {
        "assert tri(1) == 3": "a line of the recurrence (one term), not a call: tri(1) returns [1, 3]",
        "assert tri(2) == 2": "a line of the recurrence (one term), not a call: tri(2) returns [1, 3, 2]",
        "assert tri(4) == 3": "a line of the recurrence (one term), not a call: tri(4) returns [1, 3, 2, 8, 3]",
    },
    "HumanEval/148": {
        "assert bf('Earth', 'Mercury') == 'Venus'": (
            "the docstring writes (\"Venus\"), a string; the answer is the tuple ('Venus',)"
        ),
    },
}

# No checkable docstring example and no self-contained assert in `check` (its asserts use
# random strings built in a loop), so the public test is written here: a round trip through
# the encoder the prompt defines.
HAND_WRITTEN_PUBLIC_TESTS: dict[str, str] = {
    "HumanEval/38": "assert decode_cyclic(encode_cyclic('abcdefghijk')) == 'abcdefghijk'",
    "HumanEval/50": "assert decode_shift(encode_shift('abcdefghijk')) == 'abcdefghijk'",
}


@dataclass(frozen=True)
class DocstringTests:
    public: str  # one `assert` line
    origin: str  # the docstring style it came from, CHECK_ORIGIN or HAND_WRITTEN_ORIGIN
    example_asserts: tuple[str, ...]  # every usable docstring example, in docstring order


def check_humaneval_record(record: Record, where: str) -> None:
    require_fields(record, HUMANEVAL_FIELDS, where)


def docstring_tests(task_id: str, prompt: str, entry_point: str, check_source: str) -> DocstringTests:
    """The public assert and the docstring asserts of one problem."""
    wrong = WRONG_DOCSTRING_EXAMPLES.get(task_id, {})
    usable = [example for example in docstring_examples(prompt, entry_point) if example_assert(example) not in wrong]
    if usable:
        # Show an example a do-nothing function fails (not `longest([]) is None`) when there is one.
        shown = next((example for example in usable if not holds_for_none(example)), usable[0])
        asserts = dict.fromkeys(example_assert(example) for example in usable)  # docstring order, no repeats
        return DocstringTests(example_assert(shown), shown.style, tuple(asserts))
    # Fallback: no docstring example can be checked (none written, or none a literal), so
    # the model is shown the official suite's first assert it can run on its own, with
    # `candidate(` rewritten to the entry point.
    from_check = first_check_assert(check_source, entry_point, prompt)
    if from_check is not None:
        return DocstringTests(from_check, CHECK_ORIGIN, ())
    if task_id in HAND_WRITTEN_PUBLIC_TESTS:
        return DocstringTests(HAND_WRITTEN_PUBLIC_TESTS[task_id], HAND_WRITTEN_ORIGIN, ())
    raise DatasetError(
        f"{task_id}: no docstring example and no self-contained assert in its check function, so there is "
        "no public test; add one to HAND_WRITTEN_PUBLIC_TESTS in data/humaneval.py"
    )


def humaneval_problem(
    record: Record,
    *,
    dataset: str = "humaneval",
    split: str = "test",
    base_check_source: str | None = None,
) -> Problem:
    """One problem; `base_check_source` is where the fallback public test is looked for
    (HumanEval+ passes the base HumanEval suite, whose asserts stand alone)."""
    task_id, entry_point = record["task_id"], record["entry_point"]
    tests = docstring_tests(task_id, record["prompt"], entry_point, base_check_source or record["test"])
    asserts = dict.fromkeys([tests.public, *tests.example_asserts])  # public first, no repeats
    private = join_code(*asserts, record["test"], f"check({entry_point})")
    _check_compiles(private, f"{task_id} private tests")
    _check_compiles(tests.public, f"{task_id} public tests")
    return Problem(
        task_id=f"{dataset}/{task_number(task_id)}",
        dataset=dataset,
        split=split,
        prompt=record["prompt"],
        public_tests=tests.public,
        private_tests=private,
        solution=record["prompt"] + record["canonical_solution"],
        entry_point=entry_point,
    )


def task_number(task_id: str) -> int:
    """`HumanEval/12` -> 12."""
    prefix, _, number = task_id.partition("/")
    if prefix != "HumanEval" or not number.isdigit():
        raise DatasetError(f"task id {task_id!r} is not of the form HumanEval/<number>; fix the row")
    return int(number)


def _check_compiles(source: str, what: str) -> None:
    try:
        compile(source, f"<{what}>", "exec")
    except SyntaxError as error:
        raise DatasetError(f"the {what} do not compile ({error.msg}, line {error.lineno}); fix the row") from None
