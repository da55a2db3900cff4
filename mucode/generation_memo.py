"""Engine replies kept on disk by the call that made them, so an identical call reads them back.

The engines' contract (`mucode.engines.sampling`) makes the replies of a `generate` call a
function of the model, the engine (its kind, settings and code), the conversations, n, the
sampling parameters and the seed streams. Evaluations that differ only in how a candidate
is selected (the selection ablation: random, LV, PT, PT+LV) make the same call for turn 1,
and for any later turn where their choices agree; through `MemoizedEngine` the second one
reads the first one's replies instead of generating them again. One JSON file per call,
written atomically, named by a digest of everything above; an unreadable or mismatched file
is generated again. The evaluate stage keeps these under ROOT/generations/.

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
    """

    def __init__(self, engine: Any, folder: str | Path, identity: str) -> None:
        self.engine, self.folder, self.identity = engine, Path(folder), identity
        self.reused_calls = 0

    def generate(self, conversations, n, sampling, streams=None):
        path = self.folder / f"{call_key(self.identity, conversations, n, sampling, streams)}.json"
        stored = read_replies(path, len(conversations), n)
        if stored is not None:
            self.reused_calls += 1
            return stored
        replies = self.engine.generate(conversations, n, sampling, streams=streams)
        self.folder.mkdir(parents=True, exist_ok=True)
        write_atomically(path, json.dumps(replies).encode())
        return replies

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)

    def __enter__(self) -> MemoizedEngine:
        self.engine.__enter__()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.engine.__exit__(*exc_info)
