"""Run one program's code and then its tests in one namespace, in the confined child.

The code is compiled as solution.py and the tests as tests.py, both before anything runs;
then the code runs, then the tests, in the same fresh `__main__` module, as
`python3 file` would. The outcome is classified here:
  passed  - the tests ran to their end;
  failed  - an AssertionError raised while the tests run (by an assert of the tests, or by
            a helper they call, such as HumanEval's check() or a stdin/stdout harness);
  memory  - MemoryError anywhere;
  error   - anything else: syntax errors, other exceptions, SystemExit / KeyboardInterrupt
            (an early exit is never a pass).
Then the verdict message goes out on the verdict pipe (see verdict.py for why it cannot be
forged by ordinary means). Runs untrusted code: only ever call it inside the child that
confine.py has locked down.
"""

import builtins
import json
import linecache
import os
import sys
import types

from .feedback import (
    SOLUTION_FILE,
    TESTS_FILE,
    early_exit_message,
    format_exception,
    memory_message,
    remember_harness_modules,
    trim,
)
from .limits import Limits
from .protocol import write_all

# Bound when the worker starts, before any program runs: a program that replaces
# builtins.exec / compile / json.dumps / os.getpid cannot make the harness skip its tests
# or mislabel the verdict's process.
_compile = builtins.compile
_exec = builtins.exec
_dumps = json.dumps
_getpid = os.getpid
_PRISTINE_BUILTINS = dict(builtins.__dict__)


def _restore_builtins() -> None:
    """Undo a program's monkey-patching of builtins, which formatting its traceback needs."""
    namespace = builtins.__dict__
    for name in [name for name in namespace if name not in _PRISTINE_BUILTINS]:
        del namespace[name]
    namespace.update(_PRISTINE_BUILTINS)


def _register_source(filename: str, source: str) -> None:
    # Tracebacks and inspect read lines from linecache; mtime None keeps the entry alive.
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)


def _fresh_main_module() -> types.ModuleType:
    module = types.ModuleType("__main__")
    module.__dict__["__builtins__"] = builtins
    sys.modules["__main__"] = module
    return module


def _describe(exc: BaseException, work_root: str, limit: int) -> str:
    try:
        return trim(format_exception(exc, work_root), limit)
    except BaseException:  # a hostile __str__ or __repr__ must not lose the verdict
        return f"{type(exc).__name__} (its traceback could not be formatted)"


def classify_exception(exc: BaseException, phase: str, tests: str, work_root: str, limits: Limits) -> tuple[str, str]:
    if isinstance(exc, MemoryError):
        return "memory", memory_message(limits.memory_mb)
    if isinstance(exc, SystemExit):
        return "error", early_exit_message(f"SystemExit({exc.code!r}) raised while running the {phase}")
    _restore_builtins()
    _register_source(TESTS_FILE, tests)  # only now, so the program never finds its tests here
    text = _describe(exc, work_root, limits.max_feedback_chars)
    if isinstance(exc, AssertionError) and phase == "tests":
        return "failed", text
    return "error", text


def run_program(code: str, tests: str, work_root: str, limits: Limits) -> tuple[str, str]:
    """Run code then tests; return (status, feedback). Never raises."""
    phase = "code"
    try:
        compiled_tests = _compile(tests, TESTS_FILE, "exec", dont_inherit=True)
        compiled_code = _compile(code, SOLUTION_FILE, "exec", dont_inherit=True)
        _register_source(SOLUTION_FILE, code)
        namespace = _fresh_main_module().__dict__
        remember_harness_modules()
        # SAFETY: untrusted code runs from here on, only ever in the child that confine.py
        # has locked down (unprivileged uid, limits, no network, read-only host, own session).
        _exec(compiled_code, namespace)
        phase = "tests"
        _exec(compiled_tests, namespace)
    except BaseException as exc:
        return classify_exception(exc, phase, tests, work_root, limits)
    return "passed", ""


def flush_standard_streams() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:  # the program may have closed or replaced them
            pass


def report(verdict_fd: int, nonce: str, status: str, feedback: str) -> None:
    message = _dumps({"nonce": nonce, "pid": _getpid(), "status": status, "feedback": feedback}) + "\n"
    write_all(verdict_fd, message.encode("ascii"))
