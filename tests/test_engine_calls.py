"""Cutting a turn's generation requests into engine calls (`mucode.engine_calls`): which
requests share a call, in which order, and that replies come back to their request."""

from __future__ import annotations

import pytest

from mucode.engine_calls import Request, fill_calls, generate_in_calls, longest_groups_first
from mucode.engines import SamplingParams
from mucode.engines.base import Engine
from mucode.engines.errors import EngineError

SAMPLING = SamplingParams(max_new_tokens=4)


def request(group: str, size: int, stream: str | None = None) -> Request:
    return Request([{"role": "user", "content": "x" * size}], stream or f"{group}/s", group)


class EchoEngine(Engine):
    """Each reply names its stream and sample; records every call's streams and n."""

    def __init__(self, drop_one: bool = False) -> None:
        self.calls: list[tuple[list[str], int]] = []
        self.drop_one = drop_one

    def generate(self, conversations, n, sampling, streams=None):
        self.calls.append((list(streams), n))
        replies = [[f"{stream}#{j}" for j in range(n)] for stream in streams]
        return replies[:-1] if self.drop_one else replies

    def close(self):
        pass


@pytest.mark.parametrize(("run_lengths", "per_call", "expected"), [
    ([1, 1, 1, 1, 1], 2, [2, 2, 1]),
    ([3, 3, 1], 4, [3, 4]),
    ([5, 1], 2, [5, 1]),  # a run longer than a call is a call of its own
    ([2, 2], 100, [4]),
])
def test_calls_fill_up_to_the_limit_without_splitting_a_run(run_lengths, per_call, expected):
    runs, start = [], 0
    for length in run_lengths:
        runs.append(list(range(start, start + length)))
        start += length
    calls = fill_calls(runs, per_call)
    assert [len(call) for call in calls] == expected
    assert [position for call in calls for position in call] == list(range(start))


def test_groups_with_the_longest_conversation_go_first_and_stay_whole_and_in_order():
    requests = [request("a", 10), request("a", 90), request("b", 50), request("c", 90), request("c", 5),
                request("d", 30)]
    # a and c tie at 90 and keep call order; a group's requests keep theirs.
    assert longest_groups_first(requests) == [[0, 1], [3, 4], [2], [5]]


def test_replies_return_to_their_request_whatever_the_call_order():
    sizes = [10, 50, 30, 40, 20]
    requests = [request(f"p{index}", size, stream=f"p{index}/search-{search}")
                for index, size in enumerate(sizes) for search in range(2)]
    engine, drawn = EchoEngine(), []
    replies = generate_in_calls(engine, requests, 2, SAMPLING, call_draws=4, on_call=drawn.append)
    assert replies == [[f"{r.stream}#0", f"{r.stream}#1"] for r in requests]
    # 4 draws at n=2: one problem (2 searches) a call, the longest conversations first.
    assert [streams for streams, _ in engine.calls] == [
        [f"p{index}/search-0", f"p{index}/search-1"] for index in (1, 3, 2, 4, 0)]
    assert drawn == [4] * 5


def test_an_engine_that_returns_too_few_replies_is_an_error_naming_the_shapes():
    with pytest.raises(EngineError, match=r"engine returned \[1\] samples for 2 conversations x n=1"):
        generate_in_calls(EchoEngine(drop_one=True), [request("a", 5), request("b", 6)], 1, SAMPLING, call_draws=8)
