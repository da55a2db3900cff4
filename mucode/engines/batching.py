"""Pure helpers for batched generation: length buckets, left padding, stop truncation and
regrouping results into ``[prompt][sample]``.

Sorting draws by prompt length before cutting batches keeps padding small; the plan
records original positions so results go back in call order. No torch, no model.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import TypeVar

Item = TypeVar("Item")


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices into ``lengths`` cut into batches of at most ``batch_size`` similar lengths.

    Longest first, so a batch that does not fit in memory fails at once, not at the end.
    The sort is stable, so equal lengths keep call order.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = sorted(range(len(lengths)), key=lambda index: -lengths[index])
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[list[list[int]], list[list[int]]]:
    """Left-padded token ids and the matching attention mask (1 = real token)."""
    width = max((len(sequence) for sequence in sequences), default=0)
    padded = [[pad_id] * (width - len(sequence)) + list(sequence) for sequence in sequences]
    mask = [[0] * (width - len(sequence)) + [1] * len(sequence) for sequence in sequences]
    return padded, mask


def cut_at_stop(generated: Sequence[int], stop_ids: Collection[int]) -> tuple[list[int], int]:
    """The reply tokens before the first stop token, and how many tokens the model really
    generated (the stop token counts; the padding after it does not)."""
    for position, token in enumerate(generated):
        if token in stop_ids:
            return list(generated[:position]), position + 1
    return list(generated), len(generated)


def group_by_prompt(
    flat: Sequence[Item], prompt_indices: Sequence[int], num_prompts: int, n: int
) -> list[list[Item]]:
    """``[prompt][sample]`` from results listed with their prompt index.

    A prompt with a single result (greedy decoding computes one draw) gets it repeated
    ``n`` times, since greedy samples are all the same.
    """
    grouped: list[list[Item]] = [[] for _ in range(num_prompts)]
    for item, prompt_index in zip(flat, prompt_indices, strict=True):
        grouped[prompt_index].append(item)
    for prompt_index, samples in enumerate(grouped):
        if len(samples) not in (1, n):
            raise ValueError(f"prompt {prompt_index} has {len(samples)} results, expected 1 or {n}")
        grouped[prompt_index] = samples * n if len(samples) == 1 else samples
    return grouped


def shared_rows(row_keys: Sequence[int]) -> tuple[list[int], list[int]]:
    """Rows that carry the same prompt share one prefill: the first row of each distinct
    key, and for every row the position of its key among those firsts."""
    first_rows: list[int] = []
    position_of_key: dict[int, int] = {}
    row_to_shared: list[int] = []
    for row, key in enumerate(row_keys):
        if key not in position_of_key:
            position_of_key[key] = len(first_rows)
            first_rows.append(row)
        row_to_shared.append(position_of_key[key])
    return first_rows, row_to_shared
