"""The ``hf`` engine: batched transformers ``generate`` on CPU or one GPU.

The model and tokenizer load once, in the constructor. ``generate`` (``BatchedEngine``)
renders every conversation with the chat template, expands it into draws (``n`` per
conversation; one when greedy), sorts the draws by prompt length into batches of
``batch_size`` (little padding); this engine runs left-padded ``model.generate`` with a KV
cache per batch and stops each row at the model's end-of-turn token; the replies go back
in call order. The samples of one
prompt in a batch share one prefill (its KV cache is copied to each row), so n samples of
a few-hundred-token prompt do not pay n prefills. Greedy decoding computes one draw per
prompt (all n samples are equal) and counts its tokens once in ``tokens_generated``.

Reproducibility: each draw samples from its own random stream, seeded from
``sampling.seed``, the prompt's tokens, its seed stream and the draw's index (the contract in
``mucode.engines.sampling``; ``SeededSampler`` draws from it). The same
prompt and seed therefore give the same reply in a second call, in a new engine, and
whatever else is in the call or the batch, up to floating-point differences between
batch shapes (a near-tie between two tokens can flip; rare in float32).

This module does not resolve model names beyond ``mucode.models`` and does not run
SGLang (see ``mucode.engines.sglang``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from transformers import Cache, GenerationConfig, LogitsProcessorList

from mucode.engines.batched import BatchedEngine
from mucode.engines.batching import cut_at_stop, left_pad, shared_rows
from mucode.engines.cpu_threads import auto_num_threads, cpu_thread_budget
from mucode.engines.errors import EngineClosedError
from mucode.engines.sampling import Draw, SamplingParams
from mucode.engines.seeded_sampler import SeededSampler
from mucode.models import ResolvedModel, default_device, resolve


class HFEngine(BatchedEngine):
    """Transformers generation with length-bucketed batches and per-draw seeds."""

    independent_draws = True

    def __init__(
        self,
        model: str | ResolvedModel,
        batch_size: int = 8,
        dtype: str = "auto",
        device: str | None = None,
        num_threads: int | None = None,
        share_prefill: bool = True,
    ) -> None:
        """``num_threads`` fixes torch's CPU threads; None picks them per batch
        (``auto_num_threads``). ``share_prefill`` computes each prompt's prefill once
        for all its samples in a batch (off only to measure or check it)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = device or default_device()
        self.num_threads = num_threads
        self.thread_budget = cpu_thread_budget()
        self.threads_in_use = 0
        self.batch_size = batch_size
        self.share_prefill = share_prefill
        resolved = resolve(model)
        self.tokenizer = resolved.tokenizer
        resolved.require_chat_template()  # fail in one line before loading the weights
        self.model = resolved.load_causal_lm(dtype=dtype, device=self.device)
        self.stop_ids = resolved.stop_ids
        self.pad_id = int(self.tokenizer.pad_token_id)
        self.tokens_generated = 0
        self.closed = False

    def generate_draws(
        self, prompts: Sequence[Sequence[int]], draws: Sequence[Draw], sampling: SamplingParams
    ) -> list[list[int]]:
        """Reply token ids (stop token removed) for one batch of draws."""
        # Threads per batch: a call can last many minutes while the machine's load changes
        # (one evaluation turn ran 30 min on 1 thread, chosen while a process exited).
        self.set_threads()
        batch_prompts = [prompts[draw.prompt_index] for draw in draws]
        processors = LogitsProcessorList()
        if not sampling.greedy:
            seeds = [draw.seed for draw in draws]
            processors.append(SeededSampler(seeds, sampling.temperature, sampling.top_p, self.device))
        # Sampling happens inside the processor, so generate itself decodes greedily.
        config = self.generation_config(sampling.max_new_tokens, do_sample=False)
        row_keys = [draw.prompt_index for draw in draws] if self.share_prefill else None
        return self.run_generate(batch_prompts, config, processors, row_keys)

    def generate_raw(self, prompts: Sequence[Sequence[int]], sampling: SamplingParams) -> list[list[int]]:
        """Plain batched ``model.generate`` on exactly these prompts, as one batch.

        The baseline for benchmarks: no sorting, no per-draw seeds; sampling uses
        transformers' own sampler seeded once from ``sampling.seed`` (global torch RNG).
        Returns reply token ids with the stop token removed.
        """
        self.check_open()
        if not prompts:
            return []
        self.set_threads()
        config = self.generation_config(sampling.max_new_tokens, do_sample=not sampling.greedy)
        if not sampling.greedy:
            config.temperature = sampling.temperature
            config.top_p = sampling.top_p
            torch.manual_seed(sampling.seed)
        return self.run_generate(prompts, config, LogitsProcessorList())

    def generation_config(self, max_new_tokens: int, do_sample: bool) -> GenerationConfig:
        """Generation settings with explicit neutral sampling values (no model defaults)."""
        return GenerationConfig(
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            num_beams=1,
            temperature=1.0,
            top_p=1.0,
            top_k=0 if do_sample else None,
            eos_token_id=self.stop_ids,
            pad_token_id=self.pad_id,
        )

    def run_generate(
        self,
        prompts: Sequence[Sequence[int]],
        config: GenerationConfig,
        processors: LogitsProcessorList,
        row_keys: Sequence[int] | None = None,
    ) -> list[list[int]]:
        """Left-pad, generate, cut every row at its stop token and count real tokens.

        Rows with equal ``row_keys`` hold the same prompt: it is prefilled once and its
        KV cache copied to each of them (n samples of one prompt cost one prefill).
        """
        padded, mask = left_pad(prompts, self.pad_id)
        input_ids = torch.tensor(padded, dtype=torch.long, device=self.device)
        attention_mask = torch.tensor(mask, dtype=torch.long, device=self.device)
        with torch.inference_mode():
            cache = self.shared_prefill(input_ids, attention_mask, row_keys)
            output = self.model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                past_key_values=cache,
                generation_config=config,
                logits_processor=processors,
            )
        replies = []
        for row in output[:, input_ids.shape[1] :].tolist():
            reply, generated_count = cut_at_stop(row, self.stop_ids)
            replies.append(reply)
            self.tokens_generated += generated_count
        return replies

    def shared_prefill(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, row_keys: Sequence[int] | None
    ) -> Cache | None:
        """The KV cache of all prompt tokens but the last, computed once per distinct
        prompt and copied to its rows; None when no two rows share a prompt.

        ``generate`` then runs only the last prompt token and continues from the cache.
        """
        if row_keys is None or input_ids.shape[1] < 2:
            return None
        first_rows, row_to_shared = shared_rows(row_keys)
        if len(first_rows) == len(row_keys):
            return None
        rows = torch.tensor(first_rows, device=self.device)
        prefix_ids, prefix_mask = input_ids[rows, :-1], attention_mask[rows, :-1]
        # Left padding: positions count real tokens only, as generate computes them.
        positions = (prefix_mask.cumsum(dim=-1) - 1).clamp(min=0)
        prefill = self.model(
            input_ids=prefix_ids,
            attention_mask=prefix_mask,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1,
        )
        cache = prefill.past_key_values
        cache.reorder_cache(torch.tensor(row_to_shared, device=self.device))
        return cache

    def set_threads(self) -> None:
        """Set torch's CPU threads for this call: the caller's number, else automatic."""
        if self.device != "cpu":
            return
        # torch may count the host's cores, not this container's share of them.
        load = os.getloadavg()[0]
        chosen = self.num_threads or auto_num_threads(self.thread_budget, load, self.threads_in_use)
        torch.set_num_threads(chosen)
        self.threads_in_use = chosen

    def check_open(self) -> None:
        if self.closed:
            raise EngineClosedError("this hf engine is closed: create a new one with make_engine('hf', model)")

    def close(self) -> None:
        """Drop the model so its memory can be freed; safe to call twice."""
        if self.closed:
            return
        self.closed = True
        del self.model
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()
