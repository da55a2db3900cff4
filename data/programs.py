"""How a problem's code and tests become one program to run: the one builder every stage uses.

For function datasets it is the code, a line break, and the tests (the contract in
docs/architecture.md). HumanEval prompts are code themselves (imports, helper functions,
the target's signature and docstring), and some targets call a helper only the prompt
defines (HumanEval/10, /32, /38, /50). The official harness runs prompt + completion; a chat
answer rewrites the whole target, so here the prompt runs first and the answer after it:
the prompt's imports and helpers stay, and whatever the answer defines again replaces them.
CodeContests programs read stdin at top level, so the code is embedded as a string and run
by the tests' harness (`stdio_harness.stdio_program`). `sandbox_program` wraps the parts as a
sandbox `Program`; `distinct_programs` builds many, each distinct program once. This module
does not run anything.
"""

from __future__ import annotations

from collections.abc import Iterable

from mucode.data.stdio_harness import stdio_program
from mucode.sandbox import Program

STDIO_DATASETS: frozenset[str] = frozenset({"codecontests"})
# Datasets whose prompt is Python source the answer builds on.
PROMPT_CODE_DATASETS: frozenset[str] = frozenset({"humaneval", "humaneval-plus"})


def program_parts(dataset: str, prompt: str, code: str, tests: str) -> tuple[str, str]:
    """(code, tests) of the program that runs `code` against `tests` of a problem of
    `dataset` with `prompt`: the sandbox runs the first, then the second, in one namespace."""
    if dataset in STDIO_DATASETS:
        return stdio_program(code, tests), ""
    if dataset in PROMPT_CODE_DATASETS:
        return f"{prompt}\n{code}", tests
    return code, tests


def runnable_program(dataset: str, prompt: str, code: str, tests: str) -> str:
    """`program_parts` as one program text."""
    program, after = program_parts(dataset, prompt, code, tests)
    return f"{program}\n{after}" if after else program


def sandbox_program(program_id: str, problem: dict[str, str], code: str, tests: str) -> Program:
    """The sandbox program that runs `code` against `tests` of `problem` (a problems row: its
    dataset and prompt decide how)."""
    return Program(program_id, *program_parts(problem["dataset"], problem["prompt"], code, tests))


def distinct_programs(jobs: Iterable[tuple[dict[str, str], str, str]]) -> tuple[list[Program], list[int]]:
    """The distinct programs of (problem, code, tests) jobs, and per job the index of its program.

    Identical programs run once: small models often repeat an answer.
    """
    index_of: dict[tuple[str, str], int] = {}
    programs: list[Program] = []
    job_program: list[int] = []
    for problem, code, tests in jobs:
        program = sandbox_program(str(len(programs)), problem, code, tests)
        key = (program.code, program.tests)
        if key not in index_of:
            index_of[key] = len(programs)
            programs.append(program)
        job_program.append(index_of[key])
    return programs, job_program
