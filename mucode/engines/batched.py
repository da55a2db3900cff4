"""The ``generate`` loop shared by the engines that decode token ids in this process (hf, ct2, openvino).

``generate`` renders every conversation with the chat template, plans its draws (``n`` per
conversation, one when greedy, each with its seed: ``mucode.engines.sampling``), cuts them
into batches of similar prompt length (``batching.length_sorted_batches``), has the engine
decode each batch (``generate_draws``), decodes the replies and puts them back in call
order. An engine supplies ``tokenizer``, ``batch_size``, ``check_open`` and
``generate_draws``. No torch and no model here.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from typing import Any

from mucode.engines.base import Conversation, Engine
from mucode.engines.batching import group_by_prompt, length_sorted_batches
from mucode.engines.chat import prompt_token_ids
from mucode.engines.sampling import Draw, SamplingParams, draws_per_prompt, plan_draws


class BatchedEngine(Engine):
    """An engine that decodes length-sorted batches of draws into reply token ids."""

    tokenizer: Any
    batch_size: int

    def prompt_token_ids(self, conversations: Sequence[Conversation]) -> list[list[int]]:
        """The exact prompt token ids ``generate`` uses for these conversations."""
        return prompt_token_ids(self.tokenizer, conversations)

    def generate(self, conversations: list[Conversation], n: int, sampling: SamplingParams,
                 streams: Sequence[str] | None = None) -> list[list[str]]:
        """``n`` replies per conversation, ``[conversation][sample]``, in call order."""
        self.check_open()
        draws_each = draws_per_prompt(n, sampling)
        if not conversations:
            return []
        prompts = self.prompt_token_ids(conversations)
        draws = plan_draws(prompts, draws_each, sampling.seed, streams)
        replies: list[str] = [""] * len(draws)
        lengths = [len(prompts[draw.prompt_index]) for draw in draws]
        for batch in length_sorted_batches(lengths, self.batch_size):
            generated = self.generate_draws(prompts, [draws[index] for index in batch], sampling)
            for index, tokens in zip(batch, generated, strict=True):
                replies[index] = self.tokenizer.decode(tokens, skip_special_tokens=True)
        prompt_indices = [draw.prompt_index for draw in draws]
        return group_by_prompt(replies, prompt_indices, len(conversations), n)

    @abstractmethod
    def generate_draws(
        self, prompts: Sequence[Sequence[int]], draws: Sequence[Draw], sampling: SamplingParams
    ) -> list[list[int]]:
        """Reply token ids (stop token removed) for one batch of draws."""

    @abstractmethod
    def check_open(self) -> None:
        """Raise ``EngineClosedError`` once the engine is closed."""
