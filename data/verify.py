"""Check a problems table by running each canonical solution against its own tests.

A problem whose canonical solution fails its public or private tests has broken tests (a
wrong split rule, a bad docstring example, a changed hub row), so run this after loading a
dataset you have not checked before, e.g. MBPP+ or CodeContests from the hub. Programs run in
a few child Python processes that fork once per program (cheap, and each program gets a clean
process and a wall-clock limit). There is NO sandbox: only run trusted code (the datasets'
own solutions); generated code goes through `mucode.sandbox`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import polars as pl

from mucode.data.programs import runnable_program

# Runs in a child interpreter: reads {"programs": [...], "timeout_s": t} on stdin, forks per
# program (output to a log file, a SIGALRM after t seconds), prints one result a program:
# null when it exited with status 0, else the end of its output.
_BATCH_RUNNER = r"""
import json, os, signal, sys, tempfile, traceback
job = json.load(sys.stdin)
results = []
with tempfile.TemporaryDirectory() as scratch:
    for index, program in enumerate(job["programs"]):
        log_path = os.path.join(scratch, f"{index}.log")
        pid = os.fork()
        if pid == 0:
            log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(log, 1)
            os.dup2(log, 2)
            os.chdir(scratch)
            signal.setitimer(signal.ITIMER_REAL, job["timeout_s"])
            status = 0
            try:
                exec(compile(program, "<program>", "exec"), {"__name__": "__main__"})
            except SystemExit as stop:
                status = 0 if stop.code in (None, 0) else 1
            except BaseException:
                traceback.print_exc()
                status = 1
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(status)
        _, status = os.waitpid(pid, 0)
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
            results.append(None)
        elif os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGALRM:
            results.append(f"timed out after {job['timeout_s']} s")
        else:
            with open(log_path, errors="replace") as handle:
                results.append(handle.read()[-1500:] or f"exit status {status}")
print(json.dumps(results))
"""


@dataclass(frozen=True)
class SolutionFailure:
    task_id: str
    tests_column: str  # "public_tests" or "private_tests"
    error: str  # the end of the program's output (a traceback), or the timeout


def failing_solutions(
    problems: pl.DataFrame,
    tests_columns: Sequence[str] = ("public_tests", "private_tests"),
    *,
    workers: int = 2,
    timeout_s: float = 30.0,
) -> list[SolutionFailure]:
    """Every (problem, tests column) whose canonical solution does not pass; [] is a clean table.

    Rows without a canonical solution (CodeContests problems with no Python 3 one) are not run.
    """
    rows = [row for row in problems.iter_rows(named=True) if row["solution"]]
    jobs = [(row, column) for column in tests_columns for row in rows]
    programs = [runnable_program(row["dataset"], row["prompt"], row["solution"], row[column]) for row, column in jobs]
    errors = run_programs(programs, workers=workers, timeout_s=timeout_s)
    return [
        SolutionFailure(row["task_id"], column, error)
        for (row, column), error in zip(jobs, errors)
        if error is not None
    ]


def run_programs(programs: Sequence[str], *, workers: int = 2, timeout_s: float = 30.0) -> list[str | None]:
    """For each program, None if it ran to the end with status 0, else why not (input order)."""
    if not programs:
        return []
    batches = [list(range(start, len(programs), workers)) for start in range(min(workers, len(programs)))]
    results: list[str | None] = [None] * len(programs)
    with ThreadPoolExecutor(max_workers=len(batches)) as pool:
        outcomes = pool.map(lambda batch: _run_batch([programs[i] for i in batch], timeout_s), batches)
        for batch, outcome in zip(batches, outcomes):
            for index, result in zip(batch, outcome):
                results[index] = result
    return results


def _run_batch(programs: list[str], timeout_s: float) -> list[str | None]:
    job = json.dumps({"programs": programs, "timeout_s": timeout_s})
    done = subprocess.run(
        [sys.executable, "-I", "-c", _BATCH_RUNNER], input=job, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"the batch runner failed: {done.stderr.strip()[-500:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])
