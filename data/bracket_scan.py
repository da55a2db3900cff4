"""Scanning example text for brackets and separators outside string literals.

Docstring examples hold Python literals inside prose: `f("(", [1, 2]) == 3`. These helpers
find where a call's bracket closes and where a list of `name = value` parts splits, skipping
anything inside quotes. They do not parse Python (that is `ast`'s job once a span is found).
"""

from __future__ import annotations

from collections.abc import Iterator

OPENING = "([{"
CLOSING = ")]}"


def unquoted_characters(text: str, start: int = 0) -> Iterator[tuple[int, str]]:
    """(index, character) of every character of `text` from `start` that is not inside quotes."""
    quote, index = "", start
    while index < len(text):
        char = text[index]
        if quote:
            if char == "\\":
                index += 1  # an escaped character cannot close the string
            elif char == quote:
                quote = ""
        elif char in "\"'":
            quote = char
        else:
            yield index, char
        index += 1


def matching_bracket(text: str, open_index: int) -> int | None:
    """The index of the bracket that closes the one at `open_index`, or None."""
    depth = 0
    for index, char in unquoted_characters(text, open_index):
        if char in OPENING:
            depth += 1
        elif char in CLOSING:
            depth -= 1
            if depth == 0:
                return index
    return None


def split_top_level(text: str) -> list[str]:
    """The non-blank parts of `text` between commas and line breaks outside brackets."""
    parts, depth, start = [], 0, 0
    for index, char in unquoted_characters(text):
        if char in OPENING:
            depth += 1
        elif char in CLOSING:
            depth -= 1
        elif char in ",\n" and depth == 0:
            parts.append(text[start:index])
            start = index + 1
    parts.append(text[start:])
    return [part for part in parts if part.strip()]
