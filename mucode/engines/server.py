"""An engine that samples from an OpenAI-compatible server over HTTP (``/v1/completions``).

The engine renders each conversation with the model's chat template itself (the same
``mucode.engines.chat`` code as the ``hf`` engine) and sends the prompt text, so every server
sees the prompt the ``hf`` engine would. Each draw is one request with ``n = 1`` and its own
``seed`` from ``mucode.engines.sampling.plan_draws`` (prompt-major, seeds hashed from the
prompt's token ids as in the ``hf`` engine), stopping at the end-of-turn tokens. Requests go
out concurrently from a thread pool of ``concurrency`` threads (the server batches them), and
the replies come back in call order as ``[conversation][sample]``.

The engine either starts the server (``command``: it owns the process, waits for it to be
ready, and kills its process group on ``close``) or attaches to one at ``base_url``.
Connection errors, timeouts and 5xx answers are retried with backoff (``RetryPolicy``); if
the owned server exits, the call fails at once in one line naming its log.

Does not know any server's launch flags (``mucode.engines.sglang`` builds SGLang's).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from mucode.engines.base import Conversation, Engine
from mucode.engines.batching import group_by_prompt
from mucode.engines.chat import prompt_texts, token_ids_of_prompts
from mucode.engines.errors import EngineClosedError
from mucode.engines.http_json import RetryPolicy, request_json
from mucode.engines.sampling import SamplingParams, draws_per_prompt, plan_draws
from mucode.engines.server_process import ServerProcess, wait_until_ready
from mucode.models import ResolvedModel, resolve


def completion_payload(model_id: str, prompt: str, sampling: SamplingParams, seed: int,
                       stop: Sequence[str]) -> dict[str, Any]:
    """The ``/v1/completions`` body for one draw (temperature 0 is greedy on the servers too)."""
    return {
        "model": model_id,
        "prompt": prompt,
        "n": 1,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "max_tokens": sampling.max_new_tokens,
        # Draw seeds are 63-bit; SGLang passes `seed` on as its per-request sampling_seed.
        "seed": seed,
        "stop": list(stop),
    }


def parse_completion(answer: Any) -> tuple[str, int]:
    """``(text, completion tokens)`` of a one-choice ``/v1/completions`` answer."""
    try:
        return str(answer["choices"][0]["text"]), int(answer["usage"]["completion_tokens"])
    except (KeyError, IndexError, TypeError, ValueError) as error:
        raise ValueError(f"not a completions answer ({type(error).__name__}: {error}): {str(answer)[:200]}") from error


class ServerEngine(Engine):
    """Samples from an OpenAI-compatible server it starts (``command``) or attaches to."""

    independent_draws = True  # one request per draw, each with its own seed

    def __init__(
        self,
        model: str | ResolvedModel,
        base_url: str,
        command: Sequence[str] | None = None,
        env: Mapping[str, str] | None = None,
        name: str = "model server",
        concurrency: int = 8,
        startup_timeout_s: float = 1800.0,
        retry: RetryPolicy = RetryPolicy(),
        served_model: str | None = None,
    ) -> None:
        """``model`` gives the tokenizer and chat template; ``command`` (if any) must make the
        server listen at ``base_url``; ``concurrency`` bounds requests in flight;
        ``served_model`` is the ``model`` field of requests (default: the resolved model path,
        which is what SGLang serves a ``--model-path`` as)."""
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        resolved = resolve(model)
        self.tokenizer = resolved.tokenizer
        resolved.require_chat_template()  # fail in one line before waiting for the server
        self.stop_texts = resolved.stop_texts
        self.base_url = base_url.rstrip("/")
        self.name = name
        self.concurrency = concurrency
        self.retry = retry
        self.model_id = served_model or resolved.path
        self.tokens_generated = 0
        self.closed = False
        self.server = None if command is None else ServerProcess(command, name, env=env)
        try:
            wait_until_ready(self.base_url, startup_timeout_s, self.server, name)
        except BaseException:
            self.close()
            raise

    def check_alive(self) -> None:
        if self.server is not None:
            self.server.check_alive()

    def complete(self, payload: dict[str, Any]) -> tuple[str, int]:
        """One draw's reply and token count."""
        url = f"{self.base_url}/v1/completions"
        return parse_completion(request_json(url, payload, self.retry, self.check_alive))

    def generate(self, conversations: list[Conversation], n: int, sampling: SamplingParams,
                 streams: Sequence[str] | None = None) -> list[list[str]]:
        """``n`` replies per conversation, ``[conversation][sample]``, in call order."""
        if self.closed:
            raise EngineClosedError(f"{self.name} engine is closed: create a new engine")
        draws_each = draws_per_prompt(n, sampling)
        if not conversations:
            return []
        texts = prompt_texts(self.tokenizer, conversations)
        draws = plan_draws(token_ids_of_prompts(self.tokenizer, texts), draws_each, sampling.seed, streams)
        payloads = [
            completion_payload(self.model_id, texts[draw.prompt_index], sampling, draw.seed, self.stop_texts)
            for draw in draws
        ]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(payloads))) as pool:
            futures = [pool.submit(self.complete, payload) for payload in payloads]
            try:
                results = [future.result() for future in futures]
            except BaseException:
                for future in futures:
                    future.cancel()  # requests not yet sent are dropped; those in flight finish
                raise
        self.tokens_generated += sum(tokens for _, tokens in results)
        return group_by_prompt([text for text, _ in results], [draw.prompt_index for draw in draws],
                               len(conversations), n)

    def close(self) -> None:
        """Kill the server this engine started (not one it attached to); safe to call twice."""
        self.closed = True
        if self.server is not None:
            self.server.kill()
