"""Sampling settings shared by every engine, and the per-draw seeds that make runs repeatable.

A *draw* is one sample of one prompt. Its seed depends only on the call's base seed, the
prompt's tokens and the draw's index among identical prompts, never on batch size,
bucketing or the other prompts of the call, so an engine that seeds each draw with
``draw_seed`` gives the same output for the same prompt wherever it sits in a call.

This module has no torch dependency and runs no model.
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class SamplingParams:
    """How to sample: ``temperature == 0`` means greedy decoding."""

    temperature: float = 0.7
    top_p: float = 1.0
    max_new_tokens: int = 1000
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.temperature >= 0.0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass(frozen=True)
class Draw:
    """One sample to generate: which prompt, which of its ``n`` samples, and its seed."""

    prompt_index: int
    sample_index: int
    seed: int


def draws_per_prompt(n: int, sampling: SamplingParams) -> int:
    """How many samples to actually compute per prompt: greedy samples are all identical."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return 1 if sampling.greedy else n


def plan_draws(prompts: Sequence[Sequence[int]], draws: int, base_seed: int) -> list[Draw]:
    """Every (prompt, sample) pair of a call, prompt-major, each with its own seed.

    Identical prompts in one call get distinct draw indices (the k-th copy continues
    where the previous copy stopped), so repeating a conversation never repeats a sample.
    """
    copies_seen: dict[bytes, int] = {}
    planned: list[Draw] = []
    for prompt_index, prompt in enumerate(prompts):
        key = prompt_key(prompt)
        copy_number = copies_seen.get(key, 0)
        copies_seen[key] = copy_number + 1
        for sample_index in range(draws):
            draw_index = copy_number * draws + sample_index
            planned.append(Draw(prompt_index, sample_index, draw_seed(base_seed, key, draw_index)))
    return planned


def prompt_key(prompt: Sequence[int]) -> bytes:
    """A compact digest of a prompt's token ids."""
    return hashlib.sha256(array("q", prompt).tobytes()).digest()


def draw_seed(base_seed: int, prompt_digest: bytes, draw_index: int) -> int:
    """A 63-bit seed for one draw, stable across processes and Python versions."""
    material = b"%d\0%d\0" % (base_seed, draw_index) + prompt_digest
    return int.from_bytes(hashlib.sha256(material).digest()[:8], "big") >> 1
