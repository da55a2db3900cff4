"""Tests for stdin/stdout programs (CodeContests) written as Python source.

A problem's tests are one call, `run_stdio_cases(PROGRAM_SOURCE, [(input, output), ...])`,
readable in a prompt. `run_stdio_cases` (source text from `stdio_harness_source`) runs the
program once per case with `sys.stdin` holding the input and `sys.stdout` captured, and
compares the printed text with the expected output token by token (so spacing and line ends
do not matter). Such a program cannot simply be followed by its tests (its top-level code
would read the real stdin first), so `stdio_program` embeds the code as a string instead.
This module does not run anything itself.
"""

from __future__ import annotations

from collections.abc import Sequence

HARNESS_FUNCTION = "run_stdio_cases"
PROGRAM_VARIABLE = "PROGRAM_SOURCE"

_HARNESS = '''\
import io as _io
import linecache as _linecache
import sys as _sys
import threading as _threading


def run_stdio_cases(source, cases):
    """Run `source` once per (input, expected output) case; raise AssertionError on a mismatch."""
    code = compile(source, "<solution>", "exec")
    # Tracebacks from the program then show its lines.
    _linecache.cache["<solution>"] = (len(source), None, source.splitlines(True), "<solution>")
    for number, (given, expected) in enumerate(cases, start=1):
        printed = _run_with_stdin(code, given)
        if printed.split() != expected.split():
            raise AssertionError(
                f"stdin/stdout case {number} of {len(cases)}: for input {_clip(given)} "
                f"the expected output is {_clip(expected)} but the program printed {_clip(printed)}"
            )


def _run_with_stdin(code, given):
    stdin = _io.TextIOWrapper(_io.BytesIO(given.encode("utf-8")), encoding="utf-8")
    stdout = _io.TextIOWrapper(_io.BytesIO(), encoding="utf-8")
    saved = _sys.stdin, _sys.stdout
    running_before = set(_threading.enumerate())
    _sys.stdin, _sys.stdout = stdin, stdout
    try:
        exec(code, {"__name__": "__main__"})
        # Contest programs often run main() in a thread with a bigger stack.
        for thread in set(_threading.enumerate()) - running_before:
            thread.join()
    except SystemExit as stop:
        if stop.code not in (None, 0):
            raise AssertionError(f"the program exited with status {stop.code!r}") from None
    finally:
        _sys.stdin, _sys.stdout = saved
    stdout.flush()
    return stdout.buffer.getvalue().decode("utf-8", errors="replace")


def _clip(text, limit=300):
    shown = repr(text)
    return shown if len(shown) <= limit else shown[:limit] + "...'"
'''


def stdio_harness_source() -> str:
    """The source text that defines `run_stdio_cases(source, cases)`."""
    return _HARNESS


def stdio_tests_source(cases: Sequence[tuple[str, str]]) -> str:
    """The tests of one problem: one `run_stdio_cases` call over `(input, output)` cases."""
    lines = [f"{HARNESS_FUNCTION}({PROGRAM_VARIABLE}, ["]
    lines += [f"    ({given!r}, {expected!r})," for given, expected in cases]
    lines.append("])")
    return "\n".join(lines)


def stdio_program(code: str, tests: str) -> str:
    """A runnable program: the harness, `code` held as a string, then `tests`."""
    return f"{_HARNESS}\n{PROGRAM_VARIABLE} = {code!r}\n\n{tests}\n"
