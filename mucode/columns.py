"""The column check every stage runs on the frames it reads.

`require_columns` raises the stage's own error with one line naming the missing columns and
how to get a frame that has them. It checks names only, not types or values.
"""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl


def require_columns(frame: pl.DataFrame, columns: Sequence[str], error: type[Exception], what: str, fix: str,
                    *, verb: str = "lacks") -> None:
    """Raise `error("<what> lacks columns [...]: <fix>")` unless `frame` has all `columns`."""
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise error(f"{what} {verb} columns {missing}: {fix}")
