"""The text the model sees: the first user message, the feedback message, code extraction.

Pure functions over strings, as in the µCode paper and its release (wording of the prompt
kept exactly). This module does not run code and does not hold conversation state (that is
`mucode.environment`).
"""

from __future__ import annotations

import re

from mucode.data.programs import STDIO_DATASETS

FIRST_MESSAGE_TEMPLATE = (
    "Write a Python function implementation for the following prompt:\n\n{problem}\n\n"
    "Your code should satisfy these tests:\n\n{public_tests}\n\n"
    "Return only the implementation code, no tests or explanations. "
    "Be sure to include the relevant import statements:\n```python\ncode\n```"
)
# Stdin/stdout problems (CodeContests) ask for a whole program instead of a function.
STDIO_FIRST_MESSAGE_TEMPLATE = (
    "Write a Python program that reads from standard input and writes to standard output "
    "for the following problem:\n\n{problem}\n\n"
    "Your program should satisfy these tests (stdin, expected stdout):\n\n{public_tests}\n\n"
    "Return only the program code, no tests or explanations. "
    "Be sure to include the relevant import statements:\n```python\ncode\n```"
)
SUCCESS_FEEDBACK = "All public tests passed."
FEEDBACK_PREFIX = "Feedback: "
MAX_FEEDBACK_CHARS = 2000

# A fenced block opened with ```python / ```py / ```Python3 (the language tag is optional
# only in the fallback below); the closing fence may be missing when generation was cut.
_PYTHON_FENCE = re.compile(r"```[ \t]*(?:python3?|py)[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL | re.IGNORECASE)
_ANY_FENCE = re.compile(r"```[^\n`]*\n(.*?)(?:```|\Z)", re.DOTALL)


def first_user_message(problem: str, public_tests: str, dataset: str) -> str:
    """The problem as the model first sees it; `dataset` picks the function or the stdin/stdout wording."""
    template = STDIO_FIRST_MESSAGE_TEMPLATE if dataset in STDIO_DATASETS else FIRST_MESSAGE_TEMPLATE
    return template.format(problem=problem.strip(), public_tests=public_tests.strip())


def extract_code(answer: str) -> str:
    """The first fenced Python block of an answer; any fenced block next; else the whole answer."""
    for pattern in (_PYTHON_FENCE, _ANY_FENCE):
        match = pattern.search(answer)
        if match:
            return match.group(1).strip("\n")
    return answer.strip()


def feedback_text(public_passed: bool, error_text: str) -> str:
    """What the environment says after a turn: a success line, or the (trimmed) error output."""
    if public_passed:
        return SUCCESS_FEEDBACK
    text = error_text.strip() or "The code failed the public tests without an error message."
    if len(text) > MAX_FEEDBACK_CHARS:
        # Keep the end: a traceback's last lines name the error.
        text = "...\n" + text[-MAX_FEEDBACK_CHARS:]
    return text


def feedback_message(public_passed: bool, error_text: str) -> str:
    return FEEDBACK_PREFIX + feedback_text(public_passed, error_text)
