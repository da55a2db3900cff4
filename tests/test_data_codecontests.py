"""CodeContests loader and the stdin/stdout test harness, on hand-made rows shaped like the
`deepmind/code_contests` hub rows (read from a local `codecontests-<split>.jsonl`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mucode.data import DatasetError, load_problems, runnable_program, sample_problems, stdio_program
from mucode.data.codecontests import codecontests_problem, first_python3_solution
from mucode.data.stdio_harness import stdio_tests_source
from mucode.data.verify import failing_solutions, run_programs

SUM_SOLUTION = "a, b = map(int, input().split())\nprint(a + b)\n"


def contest_row(name: str, python3: str | None) -> dict:
    languages, solutions = [2, 1], ["int main() { return 0; }", "print 1"]
    if python3 is not None:
        languages, solutions = [*languages, 3, 3], [*solutions, python3, "print(0)"]
    return {
        "name": name,
        "description": "Read two integers a and b and print a + b.\n",
        "public_tests": {"input": ["1 2\n"], "output": ["3\n"]},
        "private_tests": {"input": ["10 20\n", "-5 5\n"], "output": ["30\n", "0\n"]},
        "generated_tests": {"input": ["100 200\n"], "output": ["300\n"]},
        "source": 2,
        "difficulty": 7,
        "solutions": {"language": languages, "solution": solutions},
        "incorrect_solutions": {"language": [3], "solution": ["print(1)"]},
        "time_limit": {"seconds": 1, "nanos": 0},
        "memory_limit_bytes": 256000000,
        "input_file": "",
        "output_file": "",
    }


def write_split(directory: Path, split: str, rows: list[dict]) -> None:
    text = "".join(json.dumps(row) + "\n" for row in rows)
    (directory / f"codecontests-{split}.jsonl").write_text(text, encoding="utf-8")


def outcomes(code: str, tests: str) -> str | None:
    return run_programs([stdio_program(code, tests)])[0]


def test_rows_from_a_local_file_and_their_canonical_solutions_pass(tmp_path: Path) -> None:
    write_split(tmp_path, "test", [contest_row("1_A. Sum", SUM_SOLUTION), contest_row("2_B. No Python", None)])
    frame = load_problems("codecontests", "test", data_dir=tmp_path)
    assert list(frame["task_id"]) == ["codecontests/test/0", "codecontests/test/1"]
    first, second = frame.iter_rows(named=True)
    assert first["solution"] == SUM_SOLUTION and second["solution"] == ""
    assert first["prompt"] == "Read two integers a and b and print a + b."
    assert first["public_tests"] == stdio_tests_source([("1 2\n", "3\n")])
    assert first["private_tests"].count("\n    (") == 4 and first["entry_point"] == ""
    assert failing_solutions(frame) == []
    assert load_problems("codecontests", "test", data_dir=tmp_path, limit=1).height == 1


def test_a_program_right_on_the_public_case_only_fails_the_private_tests(tmp_path: Path) -> None:
    problem = codecontests_problem(contest_row("1_A. Sum", SUM_SOLUTION), "train", 5)
    assert problem["task_id"] == "codecontests/train/5"
    memorised = "print(3)\n"
    assert outcomes(memorised, problem["public_tests"]) is None
    error = outcomes(memorised, problem["private_tests"])
    assert error is not None and "stdin/stdout case 2 of 4" in error and "'30\\n'" in error


def test_output_is_compared_token_by_token() -> None:
    tests = stdio_tests_source([("1 2\n", "3\n"), ("4 5\n", "9\n")])
    trailing_blanks = "import sys\na, b = map(int, sys.stdin.readline().split())\nsys.stdout.write(str(a + b) + '   ')"
    assert outcomes(trailing_blanks, tests) is None
    assert outcomes("a, b = map(int, input().split())\nprint()\nprint(a + b)\nprint()", tests) is None
    assert outcomes("a, b = map(int, input().split())\nprint(a + b, 0)", tests) is not None


def test_programs_using_stdin_buffer_exit_and_threads_run() -> None:
    tests = stdio_tests_source([("1 2\n", "3\n"), ("7 8\n", "15\n")])
    buffered = (
        "import sys\na, b = map(int, sys.stdin.buffer.read().split())\n"
        "sys.stdout.buffer.write(b'%d\\n' % (a + b))\nexit()\n"
    )
    threaded = (
        "import sys, threading\n"
        "def main():\n    a, b = map(int, input().split())\n    print(a + b)\n"
        "threading.stack_size(1 << 24)\nthreading.Thread(target=main).start()\n"
    )
    assert outcomes(buffered, tests) is None
    assert outcomes(threaded, tests) is None
    assert "exited with status 2" in (outcomes("import sys\nsys.exit(2)", tests) or "")


def test_a_crashing_program_reports_its_own_line() -> None:
    error = outcomes("a = int(input())\nb = int(input())\nprint(a + b)\n", stdio_tests_source([("1 2\n", "3\n")]))
    assert error is not None and "<solution>" in error and "a = int(input())" in error and "ValueError" in error


def test_first_python3_solution_and_malformed_rows(tmp_path: Path) -> None:
    assert first_python3_solution({"language": [1, 3, 3], "solution": ["py2", "first", "second"]}) == "first"
    assert first_python3_solution({"language": [2], "solution": ["c++"]}) == ""
    broken = contest_row("3_C", SUM_SOLUTION)
    broken["private_tests"] = {"input": ["1 1\n"], "output": []}
    write_split(tmp_path, "valid", [contest_row("1_A", SUM_SOLUTION), broken])
    expected = r"codecontests-valid\.jsonl line 2 field 'private_tests' must map 'input' and 'output' to lists of equal"
    with pytest.raises(DatasetError, match=expected):
        load_problems("codecontests", "valid", data_dir=tmp_path)


def test_runnable_program_concatenates_function_datasets_and_embeds_stdio_code() -> None:
    assert runnable_program("mbpp", "Write f.", "def f(): pass", "assert f() is None") == "def f(): pass\nassert f() is None"
    program = runnable_program("codecontests", "Sum.", SUM_SOLUTION, stdio_tests_source([("1 2\n", "3\n")]))
    assert f"PROGRAM_SOURCE = {SUM_SOLUTION!r}" in program and "def run_stdio_cases(" in program
    assert run_programs([program]) == [None]


def test_training_sample_of_codecontests_rows(tmp_path: Path) -> None:
    write_split(tmp_path, "train", [contest_row(f"{index}_A", SUM_SOLUTION) for index in range(12)])
    frame = load_problems("codecontests", "train", data_dir=tmp_path)
    sample = sample_problems(frame, 5, seed=0)
    assert sample.height == 5 and sample.equals(sample_problems(frame, 5, seed=0))
    assert set(sample["task_id"]) <= set(frame["task_id"])


def test_hub_rows_come_from_the_asked_split(monkeypatch: pytest.MonkeyPatch) -> None:
    # No network here: `datasets.load_dataset` returns hand-made rows shaped like the hub's.
    import datasets

    calls = []

    def load_dataset(repo: str, config: str | None = None, split: str | None = None) -> list[dict]:
        calls.append((repo, config, split))
        return [contest_row("1_A. Sum", SUM_SOLUTION)]

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    monkeypatch.delenv("MUCODE_DATA_DIR", raising=False)
    frame = load_problems("codecontests", "valid")
    assert calls == [("deepmind/code_contests", None, "valid")]
    assert list(frame["task_id"]) == ["codecontests/valid/0"] and frame["solution"][0] == SUM_SOLUTION
