"""How a problem's code and tests become one program to run.

For function datasets (MBPP, HumanEval and their EvalPlus versions) it is the code, a line
break, and the tests (the contract in docs/architecture.md). CodeContests programs read
stdin at top level, so the code is embedded as a string and run by the tests' harness
(`stdio_harness.stdio_program`). This module does not run anything.
"""

from __future__ import annotations

from mucode.data.stdio_harness import stdio_program

STDIO_DATASETS: frozenset[str] = frozenset({"codecontests"})


def runnable_program(dataset: str, code: str, tests: str) -> str:
    """The program that runs `code` against `tests` of a problem of `dataset`."""
    if dataset in STDIO_DATASETS:
        return stdio_program(code, tests)
    return f"{code}\n{tests}"
