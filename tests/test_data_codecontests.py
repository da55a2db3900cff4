"""CodeContests loader and the stdin/stdout test harness, on hand-made rows shaped like the
`deepmind/code_contests` hub rows (read from a local `codecontests-<split>.jsonl`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mucode.data import DatasetError, load_problems, runnable_program, stdio_program
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


def numbered_row(index: int) -> dict:
    row = contest_row(f"{index}_A", SUM_SOLUTION)
    row["description"] = f"Problem {index}: read two integers a and b and print a + b.\n"
    return row


def test_training_sample_of_codecontests_rows(tmp_path: Path) -> None:
    write_split(tmp_path, "train", [numbered_row(index) for index in range(12)])
    sample = load_problems("codecontests", "train", data_dir=tmp_path, sample=5, sample_seed=0)
    assert sample.equals(load_problems("codecontests", "train", data_dir=tmp_path, sample=5, sample_seed=0))
    assert not sample.equals(load_problems("codecontests", "train", data_dir=tmp_path, sample=5, sample_seed=1))
    positions = [int(task_id.rsplit("/", 1)[1]) for task_id in sample["task_id"]]
    assert len(set(positions)) == 5 and positions == sorted(positions) and positions != list(range(5))
    # A task id is the row's hub position, and the row at that position is the one built.
    assert [prompt.split(":")[0] for prompt in sample["prompt"]] == [f"Problem {p}" for p in positions]
    assert load_problems("codecontests", "train", data_dir=tmp_path, sample=5, limit=2).equals(sample.head(2))
    with pytest.raises(DatasetError, match="cannot sample 13 problems from 12"):
        load_problems("codecontests", "train", data_dir=tmp_path, sample=13)


def test_the_paper_codecontests_config_trains_on_1000_sampled_problems_and_tests_on_165(tmp_path: Path) -> None:
    from mucode.artifacts import ArtifactStore
    from mucode.config import load_config
    from mucode.tasks.problems import problems_stage

    write_split(tmp_path, "train", [numbered_row(index) for index in range(1200)])
    write_split(tmp_path, "test", [numbered_row(index) for index in range(165)])
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "paper-1b-codecontests.yaml",
                      [f"data.data_dir={tmp_path}"])
    root = str(tmp_path / "store")
    data = cfg.data
    # What the iteration flow asks the problems stage for (flows/iteration.py), and evaluation.
    train = ArtifactStore(root).get_frame(problems_stage(cfg, root, dataset=data.train_dataset,
                                                         split=data.train_split, limit=data.train_limit,
                                                         sample=data.train_sample))
    (evaluated,) = data.eval_datasets
    test = ArtifactStore(root).get_frame(problems_stage(cfg, root, dataset=evaluated, split=data.eval_split,
                                                        limit=data.eval_limit))
    assert train.height == 1000 and train["task_id"].n_unique() == 1000
    positions = [int(task_id.rsplit("/", 1)[1]) for task_id in train["task_id"]]
    assert positions != list(range(1000)) and max(positions) >= 1000  # drawn, not the first rows
    assert set(train["dataset"]) == {"codecontests"} and set(train["split"]) == {"train"}
    assert test.height == 165 and list(test["task_id"]) == [f"codecontests/test/{i}" for i in range(165)]


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
