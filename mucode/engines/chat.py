"""Render conversations into prompt token ids, and find the tokens that end a reply.

Both engines build prompts here, so the ``hf`` engine's token ids and the prompt text the
``sglang`` engine sends its server come from the same chat template. This module needs a tokenizer but no torch and no
model.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from mucode.engines.errors import MissingChatTemplateError

# End-of-turn tokens of common chat templates, used when they exist in the vocabulary.
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>")


def require_chat_template(tokenizer: Any, model: str) -> None:
    """Raise one line when the tokenizer cannot render conversations."""
    if not getattr(tokenizer, "chat_template", None):
        raise MissingChatTemplateError(
            f"model {model} has no chat template: use an instruct/chat model or bundled:smollm2-135m-instruct"
        )


def prompt_texts(tokenizer: Any, conversations: Sequence[Sequence[dict[str, str]]]) -> list[str]:
    """The chat-template prompt text (with the assistant generation prompt) of each conversation."""
    return [
        tokenizer.apply_chat_template(list(conversation), add_generation_prompt=True, tokenize=False)
        for conversation in conversations
    ]


def token_ids_of_prompts(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    """The token ids of rendered prompt texts."""
    # The template already holds any BOS token, so the tokenizer must not add its own.
    return [list(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]


def prompt_token_ids(tokenizer: Any, conversations: Sequence[Sequence[dict[str, str]]]) -> list[list[int]]:
    """The chat-template prompt token ids of each conversation."""
    return token_ids_of_prompts(tokenizer, prompt_texts(tokenizer, conversations))


def end_of_turn_texts(tokenizer: Any) -> list[str]:
    """The end-of-turn token strings the vocabulary has, and the eos token: stop strings for
    servers that take text stops."""
    vocabulary = tokenizer.get_vocab()
    texts = [token for token in END_OF_TURN_TOKENS if token in vocabulary]
    if tokenizer.eos_token and tokenizer.eos_token not in texts:
        texts.append(str(tokenizer.eos_token))
    return texts


def stop_token_ids(tokenizer: Any, generation_eos: int | Iterable[int] | None) -> list[int]:
    """Token ids that end a reply: the generation config's eos, the tokenizer's eos and
    any known end-of-turn token the vocabulary has."""
    ids: set[int] = set()
    if isinstance(generation_eos, int):
        ids.add(generation_eos)
    elif generation_eos is not None:
        ids.update(int(token) for token in generation_eos)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    vocabulary = tokenizer.get_vocab()
    ids.update(vocabulary[token] for token in END_OF_TURN_TOKENS if token in vocabulary)
    return sorted(ids)
