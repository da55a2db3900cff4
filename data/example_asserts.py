"""One `assert` statement from one docstring example.

`f(x) == y` for most values; `f(x) is None` for None; a tolerance of 1e-6 when the expected
value is a float (the example may print a rounded value, the function computes a float);
`>>> f(x) == y` examples are asserted as written. Containers compare exactly: the HumanEval
examples with floats inside lists or tuples list values taken from the input or exact binary
fractions. This module does not parse docstrings.
"""

from __future__ import annotations

import ast

from mucode.data.docstring_examples import Example

FLOAT_TOLERANCE = 1e-6


def example_assert(example: Example) -> str:
    """A one-line `assert` that holds when the example holds."""
    expression, expected = example.expression, example.expected
    if example.self_checking:
        return f"assert {expression}"
    if expected is None:
        return f"assert {expression} is None"
    if isinstance(expected, float):
        return f"assert abs({expression} - {_float_source(expected)}) < {FLOAT_TOLERANCE!r}"
    return f"assert {expression} == {expected!r}"


def holds_for_none(example: Example) -> bool:
    """True when a function that returns None would pass the example (`f([]) is None`)."""
    if not example.self_checking:
        return example.expected is None
    comparison = ast.parse(example.expression, mode="eval").body
    return isinstance(comparison, ast.Compare) and all(
        isinstance(side, ast.Constant) and side.value is None for side in comparison.comparators
    )


def _float_source(value: float) -> str:
    return f"({value!r})" if value < 0 else repr(value)
