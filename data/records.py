"""Raw dataset records: reading JSONL files and checking a record's fields.

`read_jsonl` reads a `.jsonl` or `.jsonl.gz` file into dicts and names the line of any
malformed row; `require_fields` checks that a record has the fields a loader needs, with the
right types. This module does not know where files live or what the fields mean.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mucode.data.errors import DatasetError

Record = dict[str, Any]
# A record and where it came from ("mbpp.jsonl line 12", "evalplus/mbppplus row 3"), for errors.
LocatedRecord = tuple[str, Record]

_TYPE_NAMES = {str: "a string", int: "an integer", list: "a list", dict: "a mapping"}


def read_jsonl(path: Path) -> list[LocatedRecord]:
    """Every line of `path` as a JSON object with its line; blank lines are allowed, nothing else."""
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise DatasetError(f"cannot read {path}: {error}; check the file or download it again") from None
    return [
        (f"{path} line {number}", _parse_line(line, path, number))
        for number, line in enumerate(lines, start=1)
        if line.strip()
    ]


def _parse_line(line: str, path: Path, number: int) -> Record:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise DatasetError(
            f"{path} line {number} is not valid JSON ({error.msg}); fix that line or download the file again"
        ) from None
    if not isinstance(record, dict):
        raise DatasetError(
            f"{path} line {number} is a JSON {type(record).__name__}, not an object; "
            "each line must be one problem object"
        )
    return record


def require_fields(record: Mapping[str, Any], fields: Mapping[str, type], where: str) -> None:
    """Raise `DatasetError` naming `where` unless every field is present with its type.

    A field typed `list` must be a list of strings (test lists, import lists).
    """
    for name, expected in fields.items():
        if name not in record:
            raise DatasetError(
                f"{where}: field {name!r} is missing; the row must have {', '.join(fields)}"
            )
        value = record[name]
        # bool is an int in Python, but a boolean task id or count is a broken row.
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise DatasetError(
                f"{where}: field {name!r} should be {_TYPE_NAMES.get(expected, expected.__name__)} "
                f"but is {type(value).__name__}; fix the row or download the dataset again"
            )
        if expected is list and not all(isinstance(item, str) for item in value):
            raise DatasetError(f"{where}: field {name!r} should be a list of strings; fix the row")
