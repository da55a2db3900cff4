"""Dataset loaders and split definitions (`mucode.data`).

`load_problems(dataset, split)` gives one problem a row with its prompt, public and private
tests and canonical solution (columns in docs/architecture.md); `write_problems` stores it as
Parquet. CodeContests rows are stdin/stdout problems: run their code with `runnable_program`.
`mucode.data.verify` checks a loaded table by running its canonical solutions. This package
does not run generated code (that is `mucode.sandbox`) nor build prompts (`mucode.prompts`).
"""

from mucode.data.errors import DatasetError
from mucode.data.loader import load_problems, write_problems
from mucode.data.programs import STDIO_DATASETS, program_parts, runnable_program
from mucode.data.splits import (
    CODECONTESTS_TRAIN_SAMPLE_SEED,
    CODECONTESTS_TRAIN_SAMPLE_SIZE,
    DATASETS,
    SPLITS,
    is_training_split,
    mbpp_split_of,
    sample_positions,
)
from mucode.data.stdio_harness import stdio_program

__all__ = [
    "CODECONTESTS_TRAIN_SAMPLE_SEED",
    "CODECONTESTS_TRAIN_SAMPLE_SIZE",
    "DATASETS",
    "SPLITS",
    "STDIO_DATASETS",
    "DatasetError",
    "is_training_split",
    "load_problems",
    "mbpp_split_of",
    "program_parts",
    "runnable_program",
    "sample_positions",
    "stdio_program",
    "write_problems",
]
