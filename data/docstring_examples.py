"""The worked examples written in a HumanEval docstring, as (expression, expected value) pairs.

HumanEval prompts show examples in several styles; a docstring with `>>>` examples is read as
a doctest only, any other docstring by the remaining styles, in the order they appear:

- doctest: `>>> f(x)` (with `...` continuation lines) and the output on the next lines;
  `>>> f(x) == y` with no output is a comparison that must hold; no output means `None`;
- call: `f(x) ==> y`, `=> y`, `-> y`, `➞ y`, `== y`, `= y`, `# => y`, `returns y`,
  `should return y` (also after `* `, `for `, `assert `; a call may span lines);
- for: `For x = 1, y = "a" the output should be z` (or `the result should be`);
- input/output: `Input: x` (or `name = x, name = y`, or `name : x` lines) then `Output: z`.

Values must be Python literals; `true`/`false` are read as booleans, a trailing full stop or
parenthetical remark is dropped, and `a = b = 10` keeps the last value. Examples that are not
literals (e.g. `is_happy(a)`) are not examples we can check, so they are left out. This module
does not decide which examples become tests (see `humaneval`).
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from typing import Any

from mucode.data.bracket_scan import matching_bracket, split_top_level
from mucode.data.python_source import parse_expression, parse_module

DOCTEST = "doctest"
CALL = "call"
FOR = "for"
INPUT_OUTPUT = "input-output"


@dataclass(frozen=True)
class Example:
    expression: str  # Python source of what is checked, e.g. "add(2, 3)"
    expected: Any  # the literal value it should equal (ignored when self_checking)
    style: str  # DOCTEST, CALL, FOR or INPUT_OUTPUT
    self_checking: bool = False  # `>>> f(x) == y`: the expression is itself the check
    offset: int = 0  # where in the docstring the example starts (for ordering)


def docstring_examples(prompt: str, entry_point: str) -> list[Example]:
    """The examples in the docstring of `entry_point`, in docstring order."""
    docstring = raw_docstring(prompt, entry_point)
    if ">>>" in docstring:
        return doctest_examples(docstring)
    found = call_examples(docstring, entry_point) + for_examples(docstring, entry_point)
    found += input_output_examples(docstring, entry_point)
    return sorted(found, key=lambda example: example.offset)


def raw_docstring(prompt: str, entry_point: str) -> str:
    """The docstring of `entry_point` as written (escapes not decoded), without its quotes."""
    tree = parse_module(prompt)
    if tree is None:
        return ""
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == entry_point:
            # Not always the first statement: HumanEval/115 imports before its docstring.
            for statement in node.body:
                if isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant):
                    if isinstance(statement.value.value, str):
                        # The written text, not the value: `"a\nb"` in an example stays one line.
                        return _strip_quotes(ast.get_source_segment(prompt, statement.value) or "")
    return ""


def _strip_quotes(literal: str) -> str:
    body = literal.lstrip("rRuUbB")
    for quote in ('"""', "'''", '"', "'"):
        if body.startswith(quote) and body.endswith(quote) and len(body) >= 2 * len(quote):
            return body[len(quote) : -len(quote)]
    return body


# --- doctest style ---------------------------------------------------------------------------


def doctest_examples(docstring: str) -> list[Example]:
    lines = docstring.splitlines()
    offsets = _line_offsets(lines)
    examples: list[Example] = []
    index = 0
    while index < len(lines):
        stripped = lines[index].strip()
        if not stripped.startswith(">>>"):
            index += 1
            continue
        start = index
        source = [stripped[3:].strip()]
        index += 1
        while index < len(lines) and lines[index].strip().startswith("..."):
            source.append(lines[index].strip()[3:].strip())
            index += 1
        output = []
        while index < len(lines) and lines[index].strip() and not lines[index].strip().startswith(">>>"):
            output.append(lines[index].strip())
            index += 1
        example = _doctest_example(" ".join(source), "\n".join(output), offsets[start])
        if example is not None:
            examples.append(example)
    return examples


def _doctest_example(source: str, output: str, offset: int) -> Example | None:
    expression = parse_expression(source)
    if expression is None:
        return None
    text = ast.unparse(expression)
    if not output:
        if _is_equality(expression):
            return Example(text, None, DOCTEST, self_checking=True, offset=offset)
        # A doctest prints nothing when the value is None.
        return Example(text, None, DOCTEST, offset=offset)
    found, value = literal_value(output)
    return Example(text, value, DOCTEST, offset=offset) if found else None


def _is_equality(expression: ast.expr) -> bool:
    return isinstance(expression, ast.Compare) and len(expression.ops) == 1 and isinstance(expression.ops[0], ast.Eq)


# --- call style --------------------------------------------------------------------------------

_SEPARATOR = re.compile(r"\s*(?:#\s*)?(==>|=>|➞|->|==|=(?![=>])|returns|should\s+return)\s*")


def call_examples(docstring: str, entry_point: str) -> list[Example]:
    examples = []
    for match in re.finditer(rf"(?<![\w.]){re.escape(entry_point)}\s*\(", docstring):
        close = matching_bracket(docstring, match.end() - 1)
        if close is None:
            continue
        call = _literal_call(docstring[match.start() : close + 1])
        line_end = docstring.find("\n", close)
        rest = docstring[close + 1 : len(docstring) if line_end == -1 else line_end]
        separator = _SEPARATOR.match(rest)
        if call is None or separator is None:
            continue
        found, value = literal_value(rest[separator.end() :])
        if found:
            examples.append(Example(call, value, CALL, offset=match.start()))
    return examples


def _literal_call(source: str) -> str | None:
    """`source` normalised to one line if it is a call whose arguments are all literals."""
    expression = parse_expression(source)
    if not isinstance(expression, ast.Call):
        return None
    arguments = [*expression.args, *(keyword.value for keyword in expression.keywords)]
    if not all(_is_literal(argument) for argument in arguments):
        return None
    return ast.unparse(expression)


# --- "For x = 1 the output should be y" style --------------------------------------------------

_FOR_LINE = re.compile(
    r"^[ \t]*For\s+(?P<inputs>.+?),?\s+the\s+(?:output|result)\s+should\s+be\s+(?P<expected>.+)$", re.MULTILINE
)


def for_examples(docstring: str, entry_point: str) -> list[Example]:
    examples = []
    for match in _FOR_LINE.finditer(docstring):
        arguments = named_arguments(match.group("inputs"))
        found, value = literal_value(match.group("expected"))
        if arguments and found:
            examples.append(Example(_call(entry_point, arguments), value, FOR, offset=match.start()))
    return examples


# --- "Input: ... Output: ..." style ------------------------------------------------------------

_INPUT_OUTPUT = re.compile(r"^[ \t]*Input:(?P<inputs>.*?)^[ \t]*Output:(?P<expected>[^\n]*)", re.MULTILINE | re.DOTALL)


def input_output_examples(docstring: str, entry_point: str) -> list[Example]:
    examples = []
    for match in _INPUT_OUTPUT.finditer(docstring):
        inputs = match.group("inputs").strip()
        arguments = named_arguments(inputs) or positional_arguments(inputs)
        found, value = literal_value(match.group("expected"))
        if arguments is not None and found:
            examples.append(Example(_call(entry_point, arguments), value, INPUT_OUTPUT, offset=match.start()))
    return examples


def named_arguments(text: str) -> list[str]:
    """The literal values of leading `name = value` / `name : value` parts, in order.

    Reading stops at the first part that is not one (prose such as "the sum of digits will be 1").
    """
    values = []
    for part in split_top_level(text):
        match = re.fullmatch(r"\s*[A-Za-z_]\w*\s*[=:]\s*(?P<value>.+?)\s*", part, re.DOTALL)
        expression = parse_expression(match.group("value")) if match else None
        if expression is None or not _is_literal(expression):
            break
        values.append(ast.unparse(expression))
    return values


def positional_arguments(text: str) -> list[str] | None:
    """The arguments of `f(<text>)` if they are all literals, else None."""
    expression = parse_expression(f"f({text})")
    if not isinstance(expression, ast.Call) or expression.keywords:
        return None
    if not all(_is_literal(argument) for argument in expression.args):
        return None
    return [ast.unparse(argument) for argument in expression.args]


def _call(entry_point: str, arguments: list[str]) -> str:
    return f"{entry_point}({', '.join(arguments)})"


# --- shared helpers ----------------------------------------------------------------------------


def literal_value(text: str) -> tuple[bool, Any]:
    """(True, value) if `text` reads as a Python literal by the rules in the module docstring."""
    stripped = text.strip()
    # "should return 16." ends a sentence; "16." is not meant as a float.
    candidates = [stripped.rstrip("."), stripped]
    if stripped.lower() in ("true", "false"):
        candidates.append(stripped.capitalize())
    # "1 + 9 + 0 + 0 = 10": the value after the last lone "=".
    pieces = re.split(r"(?<![=<>!])=(?![=>])", stripped)
    if len(pieces) > 1:
        candidates.append(pieces[-1].strip().rstrip("."))
    # "'No' (the name should start with a letter)": drop the remark.
    candidates.append(re.sub(r"\s+\([^()]*\)\.?$", "", stripped))
    for candidate in candidates:
        expression = parse_expression(candidate)
        if expression is not None and _is_literal(expression):
            return True, ast.literal_eval(expression)
    return False, None


def _is_literal(expression: ast.expr) -> bool:
    try:
        ast.literal_eval(expression)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False
    return True


def _line_offsets(lines: list[str]) -> list[int]:
    offsets, position = [], 0
    for line in lines:
        offsets.append(position)
        position += len(line) + 1
    return offsets
