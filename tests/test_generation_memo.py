"""Generation memo: an identical engine call is read back from disk, any difference generates."""

import json
from pathlib import Path

from mucode.engines import SamplingParams
from mucode.generation_memo import MemoizedEngine


class CountingEngine:
    """Replies that name the call number, so a read-back reply is told from a new one."""

    def __init__(self) -> None:
        self.calls, self.tokens_generated, self.closed = 0, 0, False

    def generate(self, conversations, n, sampling, streams=None):
        self.calls += 1
        self.tokens_generated += 5 * n * len(conversations)
        return [[f"call {self.calls} reply {j}" for j in range(n)] for _ in conversations]

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.closed = True


CONVERSATIONS = [[{"role": "user", "content": "Write add(a, b)."}], [{"role": "user", "content": "Write neg(x)."}]]


def test_an_identical_call_is_read_back_and_any_difference_generates(tmp_path: Path):
    engine = CountingEngine()
    memo = MemoizedEngine(engine, tmp_path, identity="model-a")
    sampling = SamplingParams(temperature=0.7, seed=3)
    first = memo.generate(CONVERSATIONS, 2, sampling, streams=["a", "b"])
    assert memo.generate(CONVERSATIONS, 2, sampling, streams=["a", "b"]) == first
    assert engine.calls == 1 and memo.reused_calls == 1 and memo.tokens_generated == 20
    # A new process (another evaluation) reads the same file.
    assert MemoizedEngine(CountingEngine(), tmp_path, "model-a").generate(CONVERSATIONS, 2, sampling, ["a", "b"]) == first
    for changed in [dict(sampling=SamplingParams(temperature=0.7, seed=4)), dict(streams=["a", "c"]),
                    dict(conversations=CONVERSATIONS[:1]), dict(n=3)]:
        call = dict(conversations=CONVERSATIONS, n=2, sampling=sampling, streams=["a", "b"]) | changed
        before = engine.calls
        memo.generate(**call)
        assert engine.calls == before + 1, changed
    other_model = CountingEngine()
    MemoizedEngine(other_model, tmp_path, identity="model-b").generate(CONVERSATIONS, 2, sampling, ["a", "b"])
    assert other_model.calls == 1


def test_a_torn_or_misshapen_file_is_generated_again(tmp_path: Path):
    engine = CountingEngine()
    memo = MemoizedEngine(engine, tmp_path, identity="m")
    sampling = SamplingParams(seed=1)
    memo.generate(CONVERSATIONS, 2, sampling)
    (stored,) = tmp_path.glob("*.json")
    stored.write_text(stored.read_text()[:10])
    assert memo.generate(CONVERSATIONS, 2, sampling)[0][0] == "call 2 reply 0"
    stored.write_text(json.dumps([["one reply"]]))  # not 2 conversations x 2 replies
    assert memo.generate(CONVERSATIONS, 2, sampling)[0][0] == "call 3 reply 0"
    assert engine.calls == 3 and memo.reused_calls == 0


def test_the_wrapped_engine_is_entered_and_closed_through_the_memo(tmp_path: Path):
    engine = CountingEngine()
    with MemoizedEngine(engine, tmp_path, identity="m") as memo:
        memo.generate(CONVERSATIONS, 1, SamplingParams())
    assert engine.closed


class IndependentEngine(CountingEngine):
    """Replies name the conversation, so a reply read back per conversation is checkable."""

    independent_draws = True

    def generate(self, conversations, n, sampling, streams=None):
        self.calls += 1
        self.asked = [conversation[0]["content"] for conversation in conversations]
        self.tokens_generated += 5 * n * len(conversations)
        return [[f"{conversation[0]['content']} call {self.calls} reply {j}" for j in range(n)]
                for conversation in conversations]


def test_an_engine_of_independent_draws_is_memoised_per_conversation(tmp_path: Path):
    engine = IndependentEngine()
    memo = MemoizedEngine(engine, tmp_path, identity="m")
    sampling = SamplingParams(seed=2)
    third = [{"role": "user", "content": "Write inc(x)."}]
    first = memo.generate(CONVERSATIONS, 2, sampling, streams=["a", "b"])
    # A call that repeats the second conversation (same stream) generates only the new one.
    again = memo.generate([CONVERSATIONS[1], third], 2, sampling, streams=["b", "c"])
    assert engine.asked == ["Write inc(x)."] and again[0] == first[1] and again[1][0].endswith("call 2 reply 0")
    assert memo.reused_conversations == 1 and memo.reused_calls == 0
    assert memo.generate([third, CONVERSATIONS[0]], 2, sampling, streams=["c", "a"]) == [again[1], first[0]]
    assert engine.calls == 2 and memo.reused_calls == 1 and memo.reused_conversations == 3
    # Another stream for the same conversation is another sample: generated.
    memo.generate(CONVERSATIONS[:1], 2, sampling, streams=["z"])
    assert engine.calls == 3
    # Without streams, the call as a whole is the key, as for any engine.
    memo.generate(CONVERSATIONS, 2, sampling)
    assert engine.calls == 4 and engine.asked == ["Write add(a, b).", "Write neg(x)."]
