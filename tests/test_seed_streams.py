"""The seed contract end to end: identical conversations never repeat a sample, whatever the
chunking, on the real hf engine with the bundled SmolLM2-135M (slow: loads the model).

Training rollouts at turn 2 and evaluation searches of two problems with the same text give
N distinct samples at temperature 0.7, and the same samples for every chunk size, because
each (problem, rollout, turn) and (problem, search, turn, candidate) has its own seed stream
(`mucode.engines.sampling`)."""

from __future__ import annotations

import random

import pytest

from mucode.engines import SamplingParams
from mucode.environment import extend_conversation, initial_conversation
from mucode.search import Search

pytestmark = pytest.mark.slow

SAMPLING = SamplingParams(temperature=0.7, top_p=1.0, max_new_tokens=12, seed=0)
ROLLOUTS = 4


@pytest.fixture(scope="module")
def engine():
    from mucode.engines import make_engine
    from mucode.models import resolve_model

    # Per-draw seeds make a draw's sample independent of its batch (up to float near-ties,
    # rare over 12 tokens: see mucode.engines.hf).
    with make_engine("hf", resolve_model("bundled:smollm2-135m-instruct"), batch_size=4) as hf:
        yield hf


def second_turn_conversation():
    start = initial_conversation("Write add(a, b) returning the sum.", "assert add(1, 2) == 3", "mbpp")
    return extend_conversation(start, "```python\ndef add(a, b):\n    return a - b\n```", False,
                               "AssertionError: assert add(1, 2) == 3")


def test_identical_rollouts_at_turn_two_get_distinct_samples_whatever_the_chunk_size(engine):
    from mucode.tasks.rollout import generate_turn

    conversation = second_turn_conversation()
    by_chunk = {}
    for chunk_size in (1, 2, ROLLOUTS):
        trajectories = [Search({"task_id": "t/add"}, rollout, list(conversation)) for rollout in range(ROLLOUTS)]
        by_chunk[chunk_size] = generate_turn(engine, trajectories, 2, ROLLOUTS, SAMPLING, chunk_size, lambda _: None)
    for chunk_size, answers in by_chunk.items():
        assert len(set(answers)) == ROLLOUTS, (chunk_size, answers)
    assert by_chunk[1] == by_chunk[2] == by_chunk[ROLLOUTS]


def test_searches_of_problems_with_the_same_text_get_distinct_candidates_whatever_the_chunking(engine):
    from mucode.best_of_n import generate_candidates

    # Two problems with the same text (datasets hold duplicates), two searches each, N = 2.
    conversation = second_turn_conversation()
    by_chunk = {}
    for chunk_draws in (2, 8):  # one problem a call, or both in one call
        live = [Search({"task_id": task}, search, list(conversation), random.Random(0))
                for task in ("t/a", "t/b") for search in range(2)]
        by_chunk[chunk_draws] = generate_candidates(engine, live, 2, 2, SAMPLING, chunk_draws)
    for chunk_draws, samples in by_chunk.items():
        flat = [sample for candidates in samples for sample in candidates]
        assert len(set(flat)) == 8, (chunk_draws, samples)
    assert by_chunk[2] == by_chunk[8]
