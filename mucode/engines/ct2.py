"""The ``ct2`` engine: CTranslate2 generation on CPU (int8 weights by default).

The engine serves any model ``mucode.models.resolve_model`` accepts, including a freshly
fine-tuned checkpoint: the first use converts the transformers directory with CTranslate2's
own converter, in a child process (which loads torch and the full model, then exits), into
``<model cache>/ct2/<content hash>-<weights>``. The key is the checkpoint's
``ResolvedModel.content_hash`` (weights, config, tokenizer, chat template), the stored weight type
and the CTranslate2 version, so a retrained checkpoint at the same path converts again;
``models.build_once`` makes the conversion atomic and race-safe.

Prompts, stop tokens and batching are the ``hf`` engine's: the same chat template
(``chat.prompt_token_ids``), the same draws (``sampling.plan_draws``), batches of similar
prompt length (``batching.length_sorted_batches``; CTranslate2 prefills a batch together
only up to its shortest prompt and feeds the rest token by token), replies cut at the first
stop token and counted in ``tokens_generated`` the same way.

Seeded sampling: CTranslate2 samples every row of a batch from one random generator, so a
draw cannot have a stream of its own as in the ``hf`` engine. Each batch is seeded from its
draws' seeds (``batch_seed``): the same call (same conversations, n, seed and batch size)
repeats its samples exactly, in this engine or a new one, different seeds give different
samples, and identical prompts in one call get distinct samples; a draw's sample does
depend on the other draws in its batch. CTranslate2 seeds a worker thread's generator once,
when that thread first samples (``set_random_seed`` alone does not reseed it), so every
sampled batch runs on a freshly loaded ``Generator``: about a second from the page cache,
against tens of seconds of decoding per batch. Greedy decoding keeps the loaded one.

Numerics: with ``compute_type="float32"`` the weights stay float32 and greedy replies match
the ``hf`` engine's except where CTranslate2's kernels round differently on a near tie;
``int8`` (the default) quantises the weights and changes some replies (bounded in
``bench/engines.py`` on HumanEval).

This module does not train and does not run on GPUs (CTranslate2's CUDA build is not
installed here); torch is imported only by the tokenizer and by the converter process.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from mucode.engines.batched import BatchedEngine
from mucode.engines.batching import cut_at_stop
from mucode.engines.child_process import failure_of
from mucode.engines.cpu_threads import auto_num_threads, cpu_thread_budget
from mucode.engines.errors import EngineClosedError, EngineError, EngineUnavailableError
from mucode.engines.sampling import Draw, SamplingParams
from mucode.freed_memory import hand_back_free_pages
from mucode.hashing import sha256_hex
from mucode.models import CACHE_MARKER, ResolvedModel, build_once, default_cache_dir, resolve

CT2_MISSING = "the ct2 engine needs CTranslate2: pip install ctranslate2==4.8.5"
# Compute types this CPU offers CTranslate2 (bf16/fp16 do not run here).
COMPUTE_TYPES = ("int8", "int8_float32", "int16", "float32")


class ConversionError(EngineError):
    """CTranslate2 could not convert a checkpoint; the message is one line."""


def stored_weights(compute_type: str) -> str:
    """The weight type a converted model stores for ``compute_type`` (int8 serves both int8 types)."""
    if compute_type not in COMPUTE_TYPES:
        raise ValueError(f"unknown ct2 compute_type {compute_type!r}: use one of {', '.join(COMPUTE_TYPES)}")
    return "int8" if compute_type.startswith("int8") else compute_type


def conversion_key(fingerprint: str, weights: str, ct2_version: str) -> str:
    """The cache directory name of one conversion: what went in and which converter ran."""
    converter = sha256_hex(f"{weights}\0{ct2_version}")[:8]
    return f"{fingerprint[:24]}-{weights}-{converter}"


def ensure_converted(model: str | ResolvedModel, weights: str, cache_root: Path | None = None) -> Path:
    """The CTranslate2 copy of a transformers model, converting it on first use."""
    import ctranslate2

    resolved = resolve(model)
    root = (cache_root or default_cache_dir()) / "ct2"
    target = root / conversion_key(resolved.content_hash, weights, ctranslate2.__version__)

    def convert(staging: Path) -> None:
        run_converter(resolved.path, staging, weights)
        provenance = {"source": resolved.path, "weights": weights, "ctranslate2": ctranslate2.__version__}
        (staging / CACHE_MARKER).write_text(json.dumps(provenance, indent=2) + "\n")

    return build_once(target, convert)


def run_converter(model_dir: str, out_dir: Path, weights: str) -> None:
    """CTranslate2's transformers converter in a child process; one line when it fails."""
    command = [
        sys.executable, "-m", "ctranslate2.converters.transformers",
        "--model", str(model_dir), "--output_dir", str(out_dir), "--quantization", weights, "--force",
    ]  # fmt: skip
    reason = failure_of(command)
    if reason is not None:
        raise ConversionError(f"CTranslate2 cannot convert model {model_dir}: {reason}")


def batch_seed(draws: Sequence[Draw]) -> int:
    """One 32-bit seed for a batch (CTranslate2's generator takes 32 bits), from its draws' seeds."""
    material = b"".join(draw.seed.to_bytes(8, "big") for draw in draws)
    return int.from_bytes(hashlib.sha256(material).digest()[:4], "big")


class CT2Engine(BatchedEngine):
    """CTranslate2 generation with length-bucketed batches and per-batch seeds."""

    def __init__(
        self,
        model: str | ResolvedModel,
        batch_size: int = 8,
        compute_type: str = "int8",
        num_threads: int | None = None,
        cache_dir: str | Path | None = None,
    ) -> None:
        """``num_threads`` fixes CTranslate2's intra-op threads; None picks them per batch
        from the CPU budget and the load, as the hf engine does (on a busy machine one thread
        beats two), reloading the model when the number changes. ``cache_dir`` is the model
        cache (default ``models.default_cache_dir()``)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        try:
            import ctranslate2
        except ImportError as error:
            raise EngineUnavailableError(CT2_MISSING) from error
        self.ctranslate2 = ctranslate2
        self.batch_size = batch_size
        resolved = resolve(model, cache_dir)
        self.tokenizer = resolved.tokenizer
        resolved.require_chat_template()  # fail in one line before converting
        cache_root = Path(cache_dir).expanduser() if cache_dir is not None else None
        self.converted = ensure_converted(resolved, stored_weights(compute_type), cache_root)
        self.compute_type = compute_type
        self.num_threads = num_threads
        self.thread_budget = cpu_thread_budget()
        self.threads_in_use = 0
        self.generator = None
        self.load_generator(None, self.chosen_threads())
        self.stop_ids = resolved.stop_ids
        self.tokens_generated = 0
        self.closed = False

    def chosen_threads(self) -> int:
        """Intra-op threads for the next batch: the caller's number, else automatic."""
        return self.num_threads or auto_num_threads(self.thread_budget, os.getloadavg()[0], self.threads_in_use)

    def load_generator(self, seed: int | None, threads: int) -> None:
        """(Re)load the CTranslate2 model on new worker threads, their sampler seeded with ``seed``."""
        if seed is not None:
            self.ctranslate2.set_random_seed(seed)
        self.generator = None  # free the old copy before loading the new one
        self.generator = self.ctranslate2.Generator(
            str(self.converted), device="cpu", compute_type=self.compute_type, intra_threads=threads
        )
        self.threads_in_use = threads

    def generate_draws(
        self, prompts: Sequence[Sequence[int]], draws: Sequence[Draw], sampling: SamplingParams
    ) -> list[list[int]]:
        """Reply token ids (stop token removed) for one batch of draws, seeded by ``batch_seed``."""
        return self.generate_token_ids([prompts[draw.prompt_index] for draw in draws], sampling, batch_seed(draws))

    def generate_token_ids(self, prompts: Sequence[Sequence[int]], sampling: SamplingParams, seed: int) -> list[list[int]]:
        """Reply token ids (stop token removed) for one batch, decoded together."""
        self.check_open()
        if not prompts:
            return []
        threads = self.chosen_threads()
        if not sampling.greedy or threads != self.threads_in_use:
            self.load_generator(None if sampling.greedy else seed, threads)
        results = self.generator.generate_batch(
            [self.tokenizer.convert_ids_to_tokens(list(prompt)) for prompt in prompts],
            max_batch_size=len(prompts),
            max_length=sampling.max_new_tokens,
            include_prompt_in_result=False,  # prefill the prompts at once
            end_token=list(self.stop_ids),
            return_end_token=True,  # counted in tokens_generated, as the hf engine does
            sampling_topk=1 if sampling.greedy else 0,
            sampling_topp=sampling.top_p,
            sampling_temperature=sampling.temperature if not sampling.greedy else 1.0,
        )
        replies = []
        for result in results:
            reply, generated_count = cut_at_stop(result.sequences_ids[0], self.stop_ids)
            replies.append(reply)
            self.tokens_generated += generated_count
        # A batch's prefill frees ~0.3 MB per prompt token (1 GB for 8 x 400 tokens); the heap,
        # tuned to keep freed memory (models.py), would hold it and fragment from batch to
        # batch (a rollout reached 7 GiB). Handing it back costs a few ms per batch.
        hand_back_free_pages()
        return replies

    def check_open(self) -> None:
        if self.closed:
            raise EngineClosedError("this ct2 engine is closed: create a new one with make_engine('ct2', model)")

    def close(self) -> None:
        """Drop the model so its memory can be freed; safe to call twice."""
        if self.closed:
            return
        self.closed = True
        self.generator = None
