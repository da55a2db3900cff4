"""Engine replies kept on disk, so an identical call, or an identical conversation, reads them back.

The engines' contract (`mucode.engines.sampling`) makes the replies of a `generate` call a
function of the model, the engine (its kind, settings and code), the conversations, n, the
sampling parameters and the seed streams. Evaluations that differ only in how a candidate
is selected (the selection ablation: random, LV, PT, PT+LV) make the same call for turn 1,
and for any later turn where their choices agree; through `MemoizedEngine` the second one
reads the first one's replies instead of generating them again. One JSON file per call,
written atomically, named by a digest of everything above; an unreadable or mismatched file
is generated again. The evaluate stage keeps these under ROOT/generations/.

An engine whose draws are seeded one by one (``Engine.independent_draws``: hf, openvino,
sglang) answers a conversation the same whatever else its call holds, so with seed streams
its replies are kept per conversation: a call reads back the conversations made before and
generates only the others. The ablation's rules then share every search whose history
agrees, not only whole calls: lv and pt+lv agree on every search with no public pass so far,
random and pt likewise (``mucode.selection``), and only those searches go on to a next turn.

It memoises nothing else (verifier scores, sandbox verdicts), never evicts, and is only as
deterministic as the engine: what it returns is what the first identical call produced.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mucode.artifacts import write_atomically
from mucode.hashing import json_digest


def call_key(identity: str, conversations: Sequence[Any], n: int, sampling: Any,
             streams: Sequence[str] | None) -> str:
    """The file name of one call: a digest of the engine identity and every argument."""
    call = {"engine": identity, "conversations": list(conversations), "n": n,
            "sampling": dataclasses.asdict(sampling), "streams": None if streams is None else list(streams)}
    return json_digest(call)


def read_replies(path: Path, conversations: int, n: int) -> list[list[str]] | None:
    """The stored replies of a call, or None when absent, torn or of another shape."""
    try:
        replies = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    shaped = (isinstance(replies, list) and len(replies) == conversations
              and all(isinstance(group, list) and len(group) == n and all(isinstance(r, str) for r in group)
                      for group in replies))
    return replies if shaped else None


class MemoizedEngine:
    """An engine whose `generate` calls are answered from `folder` when made before.

    `identity` names the model and engine settings (and their code); the wrapped engine's
    other attributes pass through. `tokens_generated` counts only what was generated.
    `reused_calls` counts calls answered wholly from disk, `reused_conversations` the
    conversations read back one by one.
    """

    def __init__(self, engine: Any, folder: str | Path, identity: str) -> None:
        self.engine, self.folder, self.identity = engine, Path(folder), identity
        self.reused_calls = 0  # calls answered wholly from disk
        self.reused_conversations = 0  # conversations read back, with an engine of independent draws

    def generate(self, conversations, n, sampling, streams=None):
        if streams is not None and getattr(self.engine, "independent_draws", False):
            return self.generate_by_conversation(conversations, n, sampling, streams)
        path = self.folder / f"{call_key(self.identity, conversations, n, sampling, streams)}.json"
        stored = read_replies(path, len(conversations), n)
        if stored is not None:
            self.reused_calls += 1
            return stored
        replies = self.engine.generate(conversations, n, sampling, streams=streams)
        self.store(path, replies)
        return replies

    def generate_by_conversation(self, conversations, n, sampling, streams):
        """The call's replies, read back per conversation; the missing ones generated in one call."""
        paths = [self.folder / f"{call_key(self.identity, [conversation], n, sampling, [stream])}.json"
                 for conversation, stream in zip(conversations, streams, strict=True)]
        replies = [stored[0] if (stored := read_replies(path, 1, n)) is not None else None for path in paths]
        missing = [index for index, reply in enumerate(replies) if reply is None]
        self.reused_conversations += len(conversations) - len(missing)
        if not missing:
            self.reused_calls += 1
            return replies
        generated = self.engine.generate([conversations[index] for index in missing], n, sampling,
                                         streams=[streams[index] for index in missing])
        for index, reply in zip(missing, generated, strict=True):
            self.store(paths[index], [reply])
            replies[index] = reply
        return replies

    def store(self, path: Path, replies: list[list[str]]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        write_atomically(path, json.dumps(replies).encode())

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)

    def __enter__(self) -> MemoizedEngine:
        self.engine.__enter__()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.engine.__exit__(*exc_info)
