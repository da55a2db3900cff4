"""The ``sglang`` engine: SGLang's offline ``Engine`` in a child process, for GPU machines.

The parent renders prompts with the model's tokenizer (the same ``chat.prompt_token_ids``
as the ``hf`` engine, so both engines see identical token ids) and sends token-id requests
to a ``WorkerProcess`` that owns ``sglang.Engine`` (``mucode.engines.sglang_backend``).
``close()`` shuts the engine down and kills the child's process group, so the GPU is
free before training starts. SGLang is imported only inside that child.

Requests: one per draw (``n`` per prompt, one when greedy), each with ``n = 1`` and its own
``sampling_seed`` from ``mucode.engines.sampling.plan_draws``, listed prompt-major. SGLang
returns one output per request in request order. (For a request with ``n > 1`` SGLang's
TokenizerManager expands prompt ``i``'s samples consecutively, ``for i in prompts: for j
in range(n)``, which is prompt-major too; we do not use that path because all ``n``
copies would share one ``sampling_seed``.) ``sampling_seed`` makes samples repeatable
only when the engine runs with ``deterministic=True`` (SGLang's
``enable_deterministic_inference``, FlashInfer/FA3/Triton attention backends).

Not tested here: anything that needs SGLang or a GPU. The request building, output
reshaping, the missing-SGLang error and the worker pipe protocol are CPU-testable.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from typing import Any, Literal, TypeVar

from mucode.engines.base import Conversation, Engine
from mucode.engines.chat import prompt_token_ids, require_chat_template, stop_token_ids
from mucode.engines.errors import EngineUnavailableError
from mucode.engines.sampling import Draw, SamplingParams, draws_per_prompt, plan_draws
from mucode.engines.worker import WorkerProcess
from mucode.models import load_tokenizer, resolve_model

Item = TypeVar("Item")
OutputOrder = Literal["prompt-major", "sample-major"]

SGLANG_BACKEND = "mucode.engines.sglang_backend:SGLangBackend"
SGLANG_MISSING = "the sglang engine needs a GPU machine and `pip install 'mucode[gpu]'`"
# The layout of SGLang's flat output for our requests (see the module docstring).
SGLANG_OUTPUT_ORDER: OutputOrder = "prompt-major"


def require_sglang() -> None:
    """Raise one line unless SGLang is installed and a CUDA GPU is visible."""
    if importlib.util.find_spec("sglang") is None:
        raise EngineUnavailableError(SGLANG_MISSING)
    import torch

    if not torch.cuda.is_available():
        raise EngineUnavailableError(SGLANG_MISSING)


def reshape_outputs(flat: Sequence[Item], num_prompts: int, n: int, order: OutputOrder) -> list[list[Item]]:
    """``[prompt][sample]`` from a flat list of ``num_prompts * n`` outputs.

    ``prompt-major``: prompt 0's n samples, then prompt 1's, ... (SGLang's layout).
    ``sample-major``: sample 0 of every prompt, then sample 1 of every prompt, ...
    """
    if len(flat) != num_prompts * n:
        raise ValueError(f"expected {num_prompts} x {n} = {num_prompts * n} outputs, got {len(flat)}")
    if order == "prompt-major":
        return [list(flat[prompt * n : (prompt + 1) * n]) for prompt in range(num_prompts)]
    if order == "sample-major":
        return [[flat[sample * num_prompts + prompt] for sample in range(n)] for prompt in range(num_prompts)]
    raise ValueError(f"unknown output order {order!r}: use prompt-major or sample-major")


def sglang_sampling_params(sampling: SamplingParams, seed: int, stop_ids: Sequence[int]) -> dict[str, Any]:
    """SGLang ``sampling_params`` for one draw (temperature 0 is greedy in SGLang too)."""
    return {
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "max_new_tokens": sampling.max_new_tokens,
        "n": 1,
        "stop_token_ids": list(stop_ids),
        "skip_special_tokens": True,
        # Draw seeds are 63-bit, so they fit a signed 64-bit integer; SGLang honours them
        # with deterministic inference.
        "sampling_seed": seed,
    }


def build_requests(
    prompts: Sequence[Sequence[int]], draws: Sequence[Draw], sampling: SamplingParams, stop_ids: Sequence[int]
) -> list[dict[str, Any]]:
    """One ``{"input_ids", "sampling_params"}`` request per draw, in draw order."""
    return [
        {
            "input_ids": list(prompts[draw.prompt_index]),
            "sampling_params": sglang_sampling_params(sampling, draw.seed, stop_ids),
        }
        for draw in draws
    ]


def engine_kwargs(
    model_path: str,
    tp_size: int,
    dp_size: int,
    base_gpu_id: int,
    mem_fraction_static: float | None,
    dtype: str,
    max_running_requests: int | None,
    deterministic: bool,
) -> dict[str, Any]:
    """Keyword arguments for ``sglang.Engine`` (its ServerArgs field names)."""
    kwargs: dict[str, Any] = {
        "model_path": model_path,
        "tp_size": tp_size,
        "dp_size": dp_size,
        "base_gpu_id": base_gpu_id,
        "dtype": dtype,
        "log_level": "error",
        "enable_deterministic_inference": deterministic,
    }
    if mem_fraction_static is not None:
        kwargs["mem_fraction_static"] = mem_fraction_static
    if max_running_requests is not None:
        kwargs["max_running_requests"] = max_running_requests
    return kwargs


def gpu_environment(gpu_ids: Sequence[int] | None, gpus_needed: int) -> dict[str, str]:
    """``CUDA_VISIBLE_DEVICES`` for the worker when the caller pins GPUs, else nothing."""
    if gpu_ids is None:
        return {}
    if len(gpu_ids) < gpus_needed:
        raise ValueError(f"tp_size x dp_size needs {gpus_needed} GPUs but gpu_ids lists {len(gpu_ids)}")
    return {"CUDA_VISIBLE_DEVICES": ",".join(str(gpu) for gpu in gpu_ids)}


class SGLangEngine(Engine):
    """SGLang generation in a child process; ``close()`` frees the GPU."""

    def __init__(
        self,
        model: str,
        tp_size: int = 1,
        dp_size: int = 1,
        gpu_ids: Sequence[int] | None = None,
        base_gpu_id: int = 0,
        mem_fraction_static: float | None = None,
        dtype: str = "auto",
        batch_size: int | None = None,
        deterministic: bool = False,
        startup_timeout_s: float = 1800.0,
        backend: str = SGLANG_BACKEND,
    ) -> None:
        """``batch_size`` caps SGLang's running requests; ``gpu_ids`` pins GPUs (then
        ``base_gpu_id`` must stay 0); ``backend`` is the import path of the class served
        in the worker (tests inject a fake to exercise the pipe protocol without SGLang)."""
        if backend == SGLANG_BACKEND:
            require_sglang()
        if gpu_ids is not None and base_gpu_id != 0:
            raise ValueError("pass either gpu_ids or base_gpu_id, not both")
        resolved = resolve_model(model)
        self.tokenizer = load_tokenizer(resolved, padding_side="left")
        require_chat_template(self.tokenizer, model)
        # SGLang also stops on the model's own eos; these add the chat end-of-turn tokens.
        self.stop_ids = stop_token_ids(self.tokenizer, None)
        self.tokens_generated = 0
        kwargs = engine_kwargs(
            resolved, tp_size, dp_size, base_gpu_id, mem_fraction_static, dtype, batch_size, deterministic
        )
        self.worker = WorkerProcess(
            backend,
            kwargs,
            env=gpu_environment(gpu_ids, tp_size * dp_size),
            startup_timeout_s=startup_timeout_s,
            name="sglang engine",
        )

    def generate(self, conversations: list[Conversation], n: int, sampling: SamplingParams,
                 streams: Sequence[str] | None = None) -> list[list[str]]:
        """``n`` replies per conversation, ``[conversation][sample]``, in call order."""
        draws_each = draws_per_prompt(n, sampling)
        if not conversations:
            return []
        prompts = prompt_token_ids(self.tokenizer, conversations)
        draws = plan_draws(prompts, draws_each, sampling.seed, streams)
        results: list[tuple[str, int]] = self.worker.call("generate", build_requests(prompts, draws, sampling, self.stop_ids))
        self.tokens_generated += sum(tokens for _, tokens in results)
        grouped = reshape_outputs([text for text, _ in results], len(conversations), draws_each, SGLANG_OUTPUT_ORDER)
        # Greedy computed one draw per prompt: every sample is that reply.
        return [samples * n if draws_each == 1 else samples for samples in grouped]

    def close(self) -> None:
        """Shut SGLang down and kill its processes; safe to call twice."""
        self.worker.close()
