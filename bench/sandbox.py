"""Benchmark: programs/s of the sandbox backends against a fresh `python3` per program.

The same 1,138 programs (every canonical MBPP and HumanEval solution with its full test
suite) go through:
  baseline  one `python3 program.py` subprocess per program (code, a line break, tests),
            as the paper's release runs them, from as many threads as the sandbox has
            workers, with the same timeout and the same interpreter as the local
            backend's workers (not a slow pyenv shim); a pass is exit code 0;
  local     mucode.sandbox, local backend;
  docker    mucode.sandbox, Docker backend (skipped, and said so, without Docker).
It prints each executor's batch time, programs/s and ratio to the baseline, and checks
that every executor passed every program (a fast executor that judges wrongly is
worthless). Worker start-up is timed and printed apart: a sandbox lives for a whole
pipeline stage, so the batch time is the figure that matters. A few canonical solutions run
for seconds on their own (mbpp/123 about 4 s), which caps every executor's batch time; a
second pass without the programs over 1 s shows the per-program cost the sandbox saves.

    .venv/bin/python bench/sandbox.py [--workers N] [--timeout S] [--data-dir DIR]
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import polars as pl
from mucode.data import load_problems

from mucode.sandbox import Program, Verdict, docker_available, make_sandbox
from mucode.sandbox.local import choose_interpreter

MBPP_SPLITS = ("prompt", "test", "validation", "train")
DEFAULT_DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"


def canonical_programs(data_dir: Path) -> list[Program]:
    frames = [load_problems("mbpp", split, data_dir=data_dir) for split in MBPP_SPLITS]
    frames.append(load_problems("humaneval", "test", data_dir=data_dir))
    return [
        Program(row["task_id"], row["solution"], row["private_tests"])
        for row in pl.concat(frames).iter_rows(named=True)
    ]


def run_in_fresh_interpreter(python: str, program: Program, timeout_s: float) -> bool:
    # SAFETY: no isolation at all, as in the paper's release: only ever for the datasets'
    # canonical solutions, never for generated code.
    with tempfile.TemporaryDirectory(prefix="bench-baseline-") as directory:
        path = Path(directory) / "program.py"
        path.write_text(program.code + "\n" + program.tests)
        try:
            finished = subprocess.run([python, str(path)], cwd=directory, capture_output=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return False
        return finished.returncode == 0


def baseline(programs: list[Program], workers: int, timeout_s: float, python: str) -> tuple[float, int]:
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        passed = sum(pool.map(lambda program: run_in_fresh_interpreter(python, program, timeout_s), programs))
    return time.perf_counter() - started, passed


def sandboxed(
    backend: str, programs: list[Program], workers: int, timeout_s: float
) -> tuple[float, float, list[Verdict]]:
    """(start-up seconds, batch seconds, verdicts)."""
    started = time.perf_counter()
    with make_sandbox(backend, workers=workers, timeout_s=timeout_s) as sandbox:
        ready = time.perf_counter()
        verdicts = sandbox.run(programs)
        done = time.perf_counter()
    return ready - started, done - ready, verdicts


def report(
    name: str, seconds: float, passed: int, total: int, reference: float | None, startup: float | None = None
) -> None:
    rate = total / seconds
    ratio = f"{reference / seconds:5.1f}x" if reference else "   1.0x"
    extra = f"  (start-up {startup:.2f} s)" if startup is not None else ""
    print(
        f"{name:<9} {seconds:7.2f} s  {rate:7.1f} programs/s  {ratio} baseline  passed {passed}/{total}{extra}",
        flush=True,
    )


LONG_PROGRAM_S = 1.0  # a program this slow on its own bounds the batch time of any executor


def compare_executors(programs: list[Program], workers: int, timeout_s: float, python: str) -> tuple[bool, list[Verdict]]:
    """Run the baseline and each backend on `programs`; (all passed everywhere, local verdicts)."""
    total = len(programs)
    print(f"load average before: {os.getloadavg()[0]:.2f}", flush=True)
    base_s, base_passed = baseline(programs, workers, timeout_s, python)
    report("baseline", base_s, base_passed, total, None)
    all_passed, local_verdicts = base_passed == total, []
    backends: list[tuple[str, Callable[[], bool]]] = [("local", lambda: True), ("docker", docker_available)]
    for backend, available in backends:
        if not available():
            print(f"{backend:<9} skipped: no Docker engine with the sandbox image (bash containers/setup-docker.sh)")
            continue
        startup_s, batch_s, verdicts = sandboxed(backend, programs, workers, timeout_s)
        passed = sum(verdict.passed for verdict in verdicts)
        report(backend, batch_s, passed, total, base_s, startup_s)
        longest = max(verdicts, key=lambda verdict: verdict.wall_s)
        print(
            f"{'':<9} longest single program {longest.id} ran {longest.wall_s:.2f} s: no executor finishes the batch "
            f"sooner, so {base_s / longest.wall_s:.1f}x is the best ratio possible in this run"
        )
        all_passed = all_passed and passed == total
        local_verdicts = local_verdicts or verdicts
    print(f"load average after: {os.getloadavg()[0]:.2f}", flush=True)
    return all_passed, local_verdicts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per program (all executors)")
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get("MUCODE_DATA_DIR", DEFAULT_DATA_DIR)))
    arguments = parser.parse_args(argv)

    python = choose_interpreter()
    programs = canonical_programs(arguments.data_dir)
    print(f"{len(programs)} programs, {arguments.workers} workers, timeout {arguments.timeout:g} s, "
          f"baseline interpreter {python}")
    all_passed, verdicts = compare_executors(programs, arguments.workers, arguments.timeout, python)
    # Second pass: the per-program cost of each executor, without the few programs whose own
    # run time (the same in every executor) caps the first pass's ratio.
    slow = {verdict.id for verdict in verdicts if verdict.wall_s > LONG_PROGRAM_S}
    if slow:
        ordinary = [program for program in programs if program.id not in slow]
        print(f"\nthe same without the {len(slow)} program(s) over {LONG_PROGRAM_S:g} s on their own "
              f"({', '.join(sorted(slow))}): {len(ordinary)} programs")
        passed_again, _ = compare_executors(ordinary, arguments.workers, arguments.timeout, python)
        all_passed = all_passed and passed_again
    if not all_passed:
        print("NOT every executor passed every program: the figures above are not comparable", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
