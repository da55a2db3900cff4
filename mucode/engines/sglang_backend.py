"""The object served inside the SGLang worker process: it owns ``sglang.Engine``.

Built by ``mucode.engines.worker.serve`` in the child process from the keyword arguments
of ``mucode.engines.sglang.engine_kwargs``; ``sglang`` is imported in the constructor,
so importing this module needs neither SGLang nor a GPU. It does not tokenize prompts
(the parent sends token ids) and does not reorder anything.
"""

from __future__ import annotations

from typing import Any


def parse_generate_outputs(outputs: Any) -> list[tuple[str, int]]:
    """``(text, completion_tokens)`` per request from ``sglang.Engine.generate``'s result
    (a list of dicts with ``text`` and ``meta_info``; a single dict for a single prompt)."""
    items = [outputs] if isinstance(outputs, dict) else list(outputs)
    return [(str(item["text"]), int(item["meta_info"]["completion_tokens"])) for item in items]


class SGLangBackend:
    """``sglang.Engine`` behind the worker protocol: ``generate(requests)`` and ``close()``."""

    def __init__(self, **engine_kwargs: Any) -> None:
        import sglang

        self.engine = sglang.Engine(**engine_kwargs)

    def generate(self, requests: list[dict[str, Any]]) -> list[tuple[str, int]]:
        """One ``(text, generated token count)`` per request, in request order."""
        if not requests:
            return []
        outputs = self.engine.generate(
            input_ids=[request["input_ids"] for request in requests],
            sampling_params=[request["sampling_params"] for request in requests],
        )
        return parse_generate_outputs(outputs)

    def close(self) -> None:
        self.engine.shutdown()
