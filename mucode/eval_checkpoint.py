"""Turn checkpoints of one evaluation: an interrupted evaluate stage resumes at its last finished turn.

After every turn the rows made so far are written (atomically) into the stage's checkpoint
folder (`tasks.evaluate.checkpoint_folder`), in a file named after N and a digest of
everything that decides those rows (generator and verifier, problems, N, T, S, selection,
sampling, seed). Code is not in the key: after changing prompts or the environment, delete
the `.turns-*` files. A rerun with the same settings finds the file and replays it; a rerun
with other settings finds none and removes the stale files of that N. The checkpoint is
deleted once the evaluation is stored.

This module only stores and finds rows; replaying them is `mucode.best_of_n.replay_turns`.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import Any

import polars as pl

from mucode.artifacts import write_atomically
from mucode.hashing import json_digest

PREFIX = ".turns"


def checkpoint_key(settings: dict[str, Any]) -> str:
    """A short digest of the settings (JSON-able values; others by their str)."""
    return json_digest(settings)


def files_fingerprint(path: str | Path) -> list[tuple[str, int, int]] | str:
    """(name, size, mtime) of every file under a model directory: a retrained model at the same
    path gets another key. Anything that is not a directory (a hub id) is taken as it is."""
    root = Path(path)
    if not root.is_dir():
        return str(path)
    return [(str(file.relative_to(root)), file.stat().st_size, file.stat().st_mtime_ns)
            for file in sorted(root.rglob("*")) if file.is_file()]


def checkpoint_path(out: Path, n: int, key: str) -> Path:
    return out / f"{PREFIX}-n{n}-{key}.parquet"


def load_checkpoint(path: Path) -> pl.DataFrame | None:
    """The checkpointed rows at `path`, or None when there are none or they are unreadable."""
    if not path.is_file():
        return None
    try:
        return pl.read_parquet(path)
    except Exception as error:  # a torn or foreign file: start over rather than fail the run
        print(f"checkpoint {path} is unreadable ({type(error).__name__}); starting from turn 1", file=sys.stderr)
        return None


def save_checkpoint(path: Path, rows: pl.DataFrame) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    rows.write_parquet(buffer)
    write_atomically(path, buffer.getvalue())


def remove_checkpoints(out: Path, n: int, keep: Path | None = None) -> list[Path]:
    """Delete the checkpoints of N under `out` except `keep`; returns what was deleted."""
    removed = [path for path in sorted(out.glob(f"{PREFIX}-n{n}-*.parquet")) if path != keep]
    for path in removed:
        path.unlink(missing_ok=True)
    return removed
