"""The one error type of `mucode.data`.

Every problem with a dataset (unknown name or split, missing file, malformed row, hub out of
reach) is raised as `DatasetError` with a one-line message that names what is wrong and how
to fix it. This module holds no logic.
"""

from __future__ import annotations


class DatasetError(ValueError):
    """A dataset cannot be loaded as asked; the message is one line and says how to fix it."""
