"""Helpers shared by the report and comparison tests: evaluation rows made to order, PNG sizes."""

from __future__ import annotations

import math
import struct
from pathlib import Path

import polars as pl

from mucode.best_of_n import ROW_SCHEMA

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def rows_for(dataset: str, n: int, turns: int, solved_turn: dict[str, int | None], selection: str = "pt") -> pl.DataFrame:
    """One search per problem; `solved_turn` says at which turn it first passes (public and private)."""
    records = []
    for task_id, solved in solved_turn.items():
        for turn in range(1, turns + 1):
            passed = solved is not None and turn >= solved
            records.append({"task_id": task_id, "dataset": dataset, "search_id": 0, "turn": turn, "n": n,
                            "selection": selection, "selected": 0, "response": "r", "code": "c",
                            "public_passed": passed, "private_passed": passed, "verifier_score": math.nan,
                            "num_public_passing_candidates": int(passed)})
    return pl.DataFrame(records, schema=ROW_SCHEMA)
