"""The interface every generation engine implements (see docs/architecture.md).

An engine turns conversations into sampled assistant replies: ``generate`` returns
``[conversation][sample]`` strings, the engine applies the chat template itself, seeds each
draw by the contract of ``mucode.engines.sampling`` (``plan_draws``, with the caller's
``streams`` when given), and
``tokens_generated`` counts generated tokens (no padding) for progress and throughput.
Engines are context managers; ``close`` releases the model (and the GPU).

This module holds no model code.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from types import TracebackType

from mucode.engines.sampling import SamplingParams

Conversation = list[dict[str, str]]


class Engine(ABC):
    """A loaded model that samples replies to conversations."""

    tokens_generated: int = 0
    # True when a conversation's replies depend only on it, n, the sampling parameters and its
    # seed stream, never on the other conversations of the call (engines that seed each draw
    # on its own). `mucode.generation_memo` then keeps replies per conversation, not per call.
    independent_draws: bool = False

    @abstractmethod
    def generate(self, conversations: list[Conversation], n: int, sampling: SamplingParams,
                 streams: Sequence[str] | None = None) -> list[list[str]]:
        """``n`` sampled replies per conversation, ``[conversation][sample]``.

        ``streams[i]`` names conversation i's seed stream: sample j is then the same
        whatever call it comes from (``mucode.engines.sampling``).
        """

    @abstractmethod
    def close(self) -> None:
        """Release the model; safe to call twice."""

    def __enter__(self) -> Engine:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
