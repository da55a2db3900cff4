"""execute_file: run a file of programs through the sandbox and write the verdicts.

Input: JSONL (`.jsonl`, `.ndjson`, `.json`: one object a line; blank lines are not rows) or
Parquet (`.parquet`) with the columns `id`, `code`, `tests` (strings). Output: Parquet with
`id`, `status`, `passed`, `feedback`, `wall_s`, one row per input row, in input order,
written atomically. A malformed row (not a JSON object, a missing or non-string field) gets
status `error` and a feedback line naming the row and the problem; it never stops the
batch. A file that cannot be read as a whole (missing, unknown format, a Parquet file
without the columns) raises one clear error instead. This is what `mucode execute` runs.
"""

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from .factory import check_settings, make_sandbox
from .program import Program, Verdict

INPUT_COLUMNS = ("id", "code", "tests")
OUTPUT_SCHEMA = {"id": pl.Utf8, "status": pl.Utf8, "passed": pl.Boolean, "feedback": pl.Utf8, "wall_s": pl.Float64}
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
PathLike = str | Path


@dataclass(frozen=True)
class MalformedRow:
    id: str
    reason: str


Row = Program | MalformedRow


def row_from_record(record: object, number: int) -> Row:
    """A Program, or a MalformedRow saying what is wrong with input row `number` (1-based)."""
    if not isinstance(record, dict):
        return MalformedRow(
            "", f"input row {number} is a {type(record).__name__}, not an object with id, code and tests"
        )
    raw_id = record.get("id")
    row_id = "" if raw_id is None else str(raw_id)
    for field in INPUT_COLUMNS:
        value = record.get(field)
        if not isinstance(value, str):
            got = "missing" if value is None else f"a {type(value).__name__}"
            return MalformedRow(row_id, f"input row {number}: field {field!r} must be a string, but it is {got}")
    return Program(id=record["id"], code=record["code"], tests=record["tests"])


def read_jsonl_rows(path: Path) -> list[Row]:
    rows: list[Row] = []
    with path.open("rb") as lines:
        for line in lines:
            if not line.strip():
                continue
            number = len(rows) + 1
            try:
                record = json.loads(line.decode("utf-8"))
            except (UnicodeDecodeError, ValueError) as exc:
                rows.append(MalformedRow("", f"input row {number} is not valid JSON ({exc})"))
                continue
            rows.append(row_from_record(record, number))
    return rows


def read_parquet_rows(path: Path) -> list[Row]:
    frame = pl.read_parquet(path)
    missing = [column for column in INPUT_COLUMNS if column not in frame.columns]
    if missing:
        raise ValueError(
            f"{path} lacks the column(s) {', '.join(missing)}; it has {', '.join(frame.columns) or 'none'}: "
            "provide id, code and tests"
        )
    return [
        row_from_record(record, number)
        for number, record in enumerate(frame.select(INPUT_COLUMNS).iter_rows(named=True), start=1)
    ]


def read_rows(path: Path) -> list[Row]:
    if not path.is_file():
        raise FileNotFoundError(f"input file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix in JSONL_SUFFIXES:
        return read_jsonl_rows(path)
    if suffix == ".parquet":
        return read_parquet_rows(path)
    raise ValueError(f"cannot tell the format of {path}: name it *.jsonl or *.parquet")


def verdicts_frame(rows: list[Row], verdicts: list[Verdict]) -> pl.DataFrame:
    """One output row per input row: a malformed row's error, else the next verdict."""
    ran = iter(verdicts)
    records = []
    for row in rows:
        if isinstance(row, MalformedRow):
            records.append({"id": row.id, "status": "error", "passed": False, "feedback": row.reason, "wall_s": 0.0})
        else:
            verdict = next(ran)
            records.append(
                {
                    "id": verdict.id,
                    "status": verdict.status,
                    "passed": verdict.passed,
                    "feedback": verdict.feedback,
                    "wall_s": verdict.wall_s,
                }
            )
    return pl.DataFrame(records, schema=OUTPUT_SCHEMA)


def write_atomically(frame: pl.DataFrame, out_path: Path) -> None:
    out_path.parent.mkdir(parents=True, exist_ok=True)
    partial = out_path.with_name(f".{out_path.name}.{os.getpid()}.partial")
    frame.write_parquet(partial)
    partial.replace(out_path)  # readers never see half a file


def execute_file(
    input_path: PathLike,
    out_path: PathLike,
    backend: str = "auto",
    workers: int | None = None,
    timeout_s: float = 10.0,
    memory_mb: int = 1024,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Run every program of input_path; write the verdicts to out_path (Parquet); return rows written."""
    check_settings(1 if workers is None else workers, timeout_s, memory_mb)
    rows = read_rows(Path(input_path))
    programs = [row for row in rows if isinstance(row, Program)]
    verdicts: list[Verdict] = []
    if programs:
        with make_sandbox(backend, workers=workers, timeout_s=timeout_s, memory_mb=memory_mb) as sandbox:
            verdicts = sandbox.run(programs, progress=progress)
    write_atomically(verdicts_frame(rows, verdicts), Path(out_path))
    return len(rows)
