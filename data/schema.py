"""The problems table every loader returns (the contract in docs/architecture.md).

`problems_frame` turns built rows into a polars DataFrame with exactly the contract's
columns, in order, all strings. `join_code` glues code blocks into one program text. This
module does not know any dataset.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypedDict

import polars as pl

COLUMNS: tuple[str, ...] = (
    "task_id",
    "dataset",
    "split",
    "prompt",
    "public_tests",
    "private_tests",
    "solution",
    "entry_point",
)

SCHEMA: dict[str, type[pl.DataType]] = {column: pl.String for column in COLUMNS}


class Problem(TypedDict):
    task_id: str
    dataset: str
    split: str
    prompt: str
    public_tests: str
    private_tests: str
    solution: str
    entry_point: str


def problems_frame(problems: Sequence[Problem]) -> pl.DataFrame:
    """One row a problem, the contract's columns in the contract's order."""
    return pl.DataFrame(
        {column: [problem[column] for problem in problems] for column in COLUMNS},
        schema=SCHEMA,
    )


def normalise_newlines(text: str) -> str:
    """MBPP ships Windows line ends; programs are written with `\\n` only."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


def join_code(*blocks: str) -> str:
    """The non-empty blocks, one after the other, as one program text."""
    return "\n".join(block.strip("\n") for block in blocks if block.strip())
