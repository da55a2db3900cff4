"""Dataset names, their splits, and which split a problem belongs to.

MBPP is split by task id as in the paper and the hub's `full` configuration (prompt 1-10,
test 11-510, validation 511-600, train 601-974); HumanEval, MBPP+ and HumanEval+ only have
`test`; CodeContests keeps the hub's `train` / `valid` / `test`. Also the seeded sampling of
the CodeContests training problems the paper trains on. This module does not read data.
"""

from __future__ import annotations

import random

from mucode.data.errors import DatasetError

DATASETS: tuple[str, ...] = ("mbpp", "humaneval", "mbpp-plus", "humaneval-plus", "codecontests")

SPLITS: dict[str, tuple[str, ...]] = {
    "mbpp": ("prompt", "test", "validation", "train"),
    "humaneval": ("test",),
    "mbpp-plus": ("test",),
    "humaneval-plus": ("test",),
    "codecontests": ("train", "valid", "test"),
}

# Inclusive task-id ranges of the MBPP splits.
MBPP_TASK_ID_RANGES: dict[str, tuple[int, int]] = {
    "prompt": (1, 10),
    "test": (11, 510),
    "validation": (511, 600),
    "train": (601, 974),
}

TRAINING_SPLITS: frozenset[str] = frozenset({"train"})

# The paper fine-tunes on 1000 CodeContests training problems drawn once; the seed is ours
# (the paper does not give one) and fixed so every run draws the same problems.
CODECONTESTS_TRAIN_SAMPLE_SIZE = 1000
CODECONTESTS_TRAIN_SAMPLE_SEED = 0


def check_dataset_split(dataset: str, split: str) -> None:
    """Raise `DatasetError` unless `split` is a split of `dataset`."""
    if dataset not in SPLITS:
        raise DatasetError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    if split not in SPLITS[dataset]:
        raise DatasetError(
            f"dataset {dataset!r} has no split {split!r}; choose one of {', '.join(SPLITS[dataset])}"
        )


def is_training_split(split: str) -> bool:
    """Training splits show all of MBPP's `test_list` as public tests; others show one assert."""
    return split in TRAINING_SPLITS


def mbpp_split_of(task_id: int) -> str:
    """The MBPP split that holds `task_id`."""
    for split, (first, last) in MBPP_TASK_ID_RANGES.items():
        if first <= task_id <= last:
            return split
    raise DatasetError(
        f"MBPP task id {task_id} is outside 1-974, so it belongs to no split; "
        "use the 974-problem MBPP release (hub config 'full')"
    )


def sample_positions(count: int, size: int, seed: int = CODECONTESTS_TRAIN_SAMPLE_SEED) -> list[int]:
    """`size` of the positions 0..count-1, drawn without replacement by `seed`, in increasing order."""
    if not 0 <= size <= count:
        raise DatasetError(f"cannot sample {size} problems from {count}; ask for at most {count}")
    return sorted(random.Random(seed).sample(range(count), size))
