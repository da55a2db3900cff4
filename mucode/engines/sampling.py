"""Sampling settings shared by every engine, and the per-draw seeds that make runs repeatable.

The seed contract (every engine plans its draws with ``plan_draws``). A *draw* is one
sample of one prompt; each prompt of a call belongs to a *seed stream*:

- named by the caller (``streams[i]``, e.g. ``"<task>/rollout-3/turn-2"``): draw j of
  prompt i is seeded by (base seed, prompt tokens, ``streams[i]``, j). The seed does not
  depend on which call, chunk, batch or position the prompt is in, so a caller that names
  one stream per (problem, rollout, turn), or per (problem, search, turn) with j the
  candidate, never repeats a sample however it cuts its work into calls. Identical prompts
  of one call must name different streams (a repeat is refused);
- not named: the k-th copy of a prompt within the call draws indices k·n .. k·n + n − 1, so
  identical prompts differ within ONE call only; two calls repeat each other's samples.

Seeds never depend on batch size, bucketing or the other prompts of the call, so an engine
that seeds each draw with its ``Draw.seed`` gives the same output for the same prompt and
stream wherever it sits.

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


def plan_draws(prompts: Sequence[Sequence[int]], draws: int, base_seed: int,
               streams: Sequence[str] | None = None) -> list[Draw]:
    """Every (prompt, sample) pair of a call, prompt-major, each with its own seed.

    ``streams`` names each prompt's seed stream (see the module docstring); without it,
    identical prompts in the call get distinct draw indices (the k-th copy continues where
    the previous copy stopped).
    """
    if streams is not None and len(streams) != len(prompts):
        raise ValueError(f"{len(streams)} seed streams for {len(prompts)} prompts: name one stream per prompt")
    copies_seen: dict[bytes, int] = {}
    planned: list[Draw] = []
    for prompt_index, prompt in enumerate(prompts):
        key = prompt_key(prompt)
        if streams is not None:
            key = hashlib.sha256(key + streams[prompt_index].encode()).digest()
        copy_number = copies_seen.get(key, 0)
        copies_seen[key] = copy_number + 1
        if streams is not None and copy_number:
            raise ValueError(f"seed stream {streams[prompt_index]!r} is named twice for one prompt: "
                             "identical prompts need distinct streams, or they repeat a sample")
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
