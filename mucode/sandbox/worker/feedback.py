"""The error text fed back to the model.

A traceback shows only the program's own frames (solution.py, tests.py, modules it wrote
into its working directory): no harness frames, no library internals, no sandbox paths.
Timeouts, memory and early exits get fixed one-line messages. Everything is trimmed to a
bound, keeping the head and the (more informative) tail. Does not decide the status.
"""

import sys
import traceback

SOLUTION_FILE = "solution.py"
TESTS_FILE = "tests.py"
NEUTRAL_ROOT = "/tmp"


# Files of the modules loaded before the program ran (the harness's own, wherever the
# checkout lives, even under the work root's path): their frames are never the program's.
_harness_files = None


def _loaded_module_files() -> frozenset:
    return frozenset(filter(None, (getattr(module, "__file__", None) for module in list(sys.modules.values()))))


def remember_harness_modules() -> None:
    """Call just before running untrusted code: what is loaded now belongs to the harness."""
    global _harness_files
    _harness_files = _loaded_module_files()


def _is_program_frame(filename: str, work_root: str, harness_files: frozenset) -> bool:
    if filename in (SOLUTION_FILE, TESTS_FILE):
        return True
    return filename.startswith(work_root.rstrip("/") + "/") and filename not in harness_files


def _keep_program_frames(report: traceback.TracebackException, work_root: str) -> None:
    harness_files = _harness_files if _harness_files is not None else _loaded_module_files()
    pending = [report]
    seen = set()
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        kept = [frame for frame in current.stack if _is_program_frame(frame.filename, work_root, harness_files)]
        current.stack = traceback.StackSummary.from_list(kept)
        pending.extend([current.__cause__, current.__context__])
        pending.extend(getattr(current, "exceptions", None) or [])  # exception groups (3.11+)


def neutralize_paths(text: str, work_root: str) -> str:
    """Show a fallback work directory (a random temp name) as the neutral /tmp."""
    if work_root.rstrip("/") == NEUTRAL_ROOT:
        return text
    return text.replace(work_root.rstrip("/"), NEUTRAL_ROOT)


def format_exception(exc: BaseException, work_root: str) -> str:
    report = traceback.TracebackException.from_exception(exc)
    _keep_program_frames(report, work_root)
    return neutralize_paths("".join(report.format()), work_root)


def trim(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    marker = f"\n... [{len(text) - limit} characters cut] ...\n"
    head = max(0, (limit - len(marker)) // 4)
    tail = max(0, limit - len(marker) - head)
    return text[:head] + marker + (text[-tail:] if tail else "")


def timeout_message(timeout_s: float) -> str:
    return f"Timeout: the program did not finish within {timeout_s:g} seconds."


def memory_message(memory_mb: int) -> str:
    return f"MemoryError: the program exceeded the memory limit of {memory_mb} MB."


def early_exit_message(how: str) -> str:
    return f"The program stopped before its tests finished ({how})."
