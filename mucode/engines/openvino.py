"""The ``openvino`` engine: OpenVINO GenAI's continuous-batching pipeline on CPU.

Why it is here: on a 2-core CPU the turns after the first have long, ragged prompts (the
problem, then every earlier answer with its feedback). CTranslate2 prefills a batch only
up to its shortest prompt and feeds the rest one token per step; OpenVINO's scheduler
prefills every prompt whole, in chunks, with paged attention, and keeps finished prompts'
KV blocks for later requests that start with the same tokens (prefix caching: the N
samples of one prompt, and a search's next turn, whose prompt extends the last one).
``bench/engines.py`` measures it beside ct2 and hf.

Models: OpenVINO GenAI reads GGUF files but not every GGUF quantisation (the bundled
Qwen2.5-Coder GGUF holds Q5_0 blocks it rejects), and a fine-tuned checkpoint is a
safetensors directory. So every model it serves, the bundled ones included, is first
written as a Q8_0 GGUF by ``mucode.gguf_export`` (once, in a child process, into
``<model cache>/openvino/<content hash>-q8_0-<exporter>/model.gguf``; ``models.build_once``
makes it atomic and race-safe). Only the bundled models and models fine-tuned from them can
be served: the GGUF's tokenizer and hyper-parameters come from the bundled GGUF.

Prompts, stop tokens and draws are the other engines' (``BatchedEngine``): the chat
template renders token ids in this process and the pipeline receives ids, never text, and
replies are cut at the first stop token. Seeded sampling: every draw is its own request with
its own ``rng_seed`` (``Draw.seed``), so a draw's sample does not depend on the other draws of
its call or batch (checked in tests/test_engines.py), up to floating-point differences
between batch shapes.

This module does not train and does not run on GPUs.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

from mucode.engines.batched import BatchedEngine
from mucode.engines.batching import cut_at_stop
from mucode.engines.child_process import failure_of
from mucode.engines.cpu_threads import cpu_thread_budget
from mucode.engines.errors import EngineClosedError, EngineError, EngineUnavailableError
from mucode.engines.sampling import Draw, SamplingParams
from mucode.hashing import sha256_hex
from mucode.models import CACHE_MARKER, ResolvedModel, build_once, default_cache_dir, resolve

OPENVINO_MISSING = "the openvino engine needs OpenVINO GenAI: pip install openvino-genai==2026.4.1.0"
# Bumped when mucode.gguf_export writes different files for the same checkpoint.
EXPORT_FORMAT = "q8_0-v1"
GGUF_NAME = "model.gguf"


class ExportError(EngineError):
    """The checkpoint could not be written as a GGUF; the message is one line."""


def export_key(fingerprint: str, gguf_version: str) -> str:
    """The cache directory name of one export: what went in and which exporter ran."""
    exporter = sha256_hex(f"{EXPORT_FORMAT}\0{gguf_version}")[:8]
    return f"{fingerprint[:24]}-{EXPORT_FORMAT}-{exporter}"


def ensure_exported(model: str | ResolvedModel, cache_root: Path | None = None) -> Path:
    """The Q8_0 GGUF of a model, exporting it on first use."""
    from importlib.metadata import version

    resolved = resolve(model)
    root = (cache_root or default_cache_dir()) / "openvino"
    target = root / export_key(resolved.content_hash, version("gguf"))

    def export(staging: Path) -> None:
        run_exporter(resolved.path, staging / GGUF_NAME, cache_root or default_cache_dir())
        (staging / CACHE_MARKER).write_text(json.dumps({"source": resolved.path, "format": EXPORT_FORMAT}, indent=2) + "\n")

    return build_once(target, export) / GGUF_NAME


EXPORT_SCRIPT = """
import sys, shutil, tempfile
from pathlib import Path
from mucode.gguf_export import GGUFExportError, export_gguf, find_template
scratch = Path(tempfile.mkdtemp(prefix="mucode-gguf-", dir=sys.argv[3]))
try:
    export_gguf(sys.argv[1], find_template(sys.argv[1], scratch, Path(sys.argv[4])), sys.argv[2])
except GGUFExportError as error:
    sys.exit(str(error))
finally:
    shutil.rmtree(scratch, ignore_errors=True)
"""


def run_exporter(model_dir: str, out_path: Path, models_cache: Path) -> None:
    """``mucode.gguf_export`` in a child process (it holds every weight once); one line when it fails."""
    command = [sys.executable, "-c", EXPORT_SCRIPT, str(model_dir), str(out_path), str(out_path.parent), str(models_cache)]
    reason = failure_of(command)
    if reason is not None:
        raise ExportError(f"cannot write model {model_dir} as GGUF for the openvino engine: {reason}")


class OpenVINOEngine(BatchedEngine):
    """OpenVINO GenAI continuous batching, one request per draw, each with its own seed."""

    independent_draws = True

    def __init__(
        self,
        model: str | ResolvedModel,
        batch_size: int = 32,
        num_threads: int | None = None,
        kv_cache_gb: int = 2,
        cache_dir: str | Path | None = None,
    ) -> None:
        """``batch_size`` draws are handed to the scheduler at once (it runs them as one
        continuous batch); ``num_threads`` defaults to this process's CPU budget;
        ``kv_cache_gb`` sizes the paged KV cache; ``cache_dir`` is the model cache."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        try:
            import openvino
            import openvino_genai
        except ImportError as error:
            raise EngineUnavailableError(OPENVINO_MISSING) from error
        self.openvino, self.genai = openvino, openvino_genai
        self.batch_size = batch_size
        resolved = resolve(model, cache_dir)
        self.tokenizer = resolved.tokenizer
        resolved.require_chat_template()  # fail in one line before exporting
        cache_root = Path(cache_dir).expanduser() if cache_dir is not None else None
        self.gguf = ensure_exported(resolved, cache_root)
        scheduler = openvino_genai.SchedulerConfig()
        scheduler.cache_size = kv_cache_gb  # whole GB
        scheduler.enable_prefix_caching = True
        scheduler.max_num_seqs = batch_size
        self.threads_in_use = num_threads or cpu_thread_budget()
        self.pipeline = openvino_genai.ContinuousBatchingPipeline(
            str(self.gguf), scheduler, "CPU", {"INFERENCE_NUM_THREADS": self.threads_in_use})
        self.stop_ids = resolved.stop_ids
        self.tokens_generated = 0
        self.closed = False

    def generation_config(self, sampling: SamplingParams, seed: int):
        """One draw's settings: OpenVINO stops at the model's stop tokens, as the other engines do."""
        config = self.genai.GenerationConfig()
        config.max_new_tokens = sampling.max_new_tokens
        config.stop_token_ids = set(self.stop_ids)
        config.do_sample = not sampling.greedy
        if not sampling.greedy:
            config.temperature = sampling.temperature
            config.top_p = sampling.top_p
            config.top_k = 0  # the whole vocabulary, as hf and ct2 sample
            config.rng_seed = seed
        return config

    def generate_draws(
        self, prompts: Sequence[Sequence[int]], draws: Sequence[Draw], sampling: SamplingParams
    ) -> list[list[int]]:
        """Reply token ids (stop token removed) for one batch of draws, scheduled together."""
        import numpy as np

        self.check_open()
        if not draws:
            return []
        inputs = [self.openvino.Tensor(np.asarray([prompts[draw.prompt_index]], dtype=np.int64)) for draw in draws]
        configs = [self.generation_config(sampling, draw.seed) for draw in draws]
        results = self.pipeline.generate(inputs, configs)
        replies = []
        for result in results:  # in request order; the ids end with the stop token, when one ended the reply
            reply, generated_count = cut_at_stop(list(result.m_generation_ids[0]), self.stop_ids)
            replies.append(reply)
            self.tokens_generated += generated_count
        return replies

    def check_open(self) -> None:
        if self.closed:
            raise EngineClosedError("this openvino engine is closed: create a new one with make_engine('openvino', model)")

    def close(self) -> None:
        """Drop the pipeline so its memory can be freed; safe to call twice."""
        if self.closed:
            return
        self.closed = True
        self.pipeline = None

