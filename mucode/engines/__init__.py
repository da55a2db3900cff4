"""Generation engines: ``hf`` (transformers, runs anywhere), ``ct2`` (CTranslate2 on CPU),
``openvino`` (OpenVINO GenAI continuous batching, the fastest on CPU) and ``sglang`` (a GPU
server, over HTTP).

``make_engine(kind, model, **options)`` builds one; engine modules are imported only
when asked for, so importing ``mucode.engines`` loads neither torch, CTranslate2, OpenVINO nor SGLang.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mucode.engines.base import Conversation, Engine
from mucode.engines.errors import (
    EngineClosedError,
    EngineError,
    EngineUnavailableError,
    MissingChatTemplateError,
    ServerError,
    UnknownEngineError,
)
from mucode.engines.sampling import SamplingParams

if TYPE_CHECKING:
    from mucode.models import ResolvedModel

ENGINE_KINDS = ("hf", "ct2", "openvino", "sglang")

__all__ = [
    "ENGINE_KINDS",
    "Conversation",
    "Engine",
    "EngineClosedError",
    "EngineError",
    "EngineUnavailableError",
    "MissingChatTemplateError",
    "SamplingParams",
    "ServerError",
    "UnknownEngineError",
    "make_engine",
]


def make_engine(kind: str, model: str | ResolvedModel, **options: Any) -> Engine:
    """An engine of ``kind`` serving ``model``: a ``mucode.models.ResolvedModel``, or any
    name ``mucode.models.resolve_model`` accepts. Options go to the engine: ``hf``: batch_size, dtype, device, num_threads;
    ``ct2``: batch_size, compute_type, num_threads, cache_dir;
    ``openvino``: batch_size, num_threads, kv_cache_gb, cache_dir;
    ``sglang``: tp_size, dp_size, gpu_ids, base_gpu_id, mem_fraction_static, dtype,
    batch_size, deterministic, startup_timeout_s, base_url (attach to a running server),
    retry (a ``mucode.engines.http_json.RetryPolicy``)."""
    if kind == "hf":
        from mucode.engines.hf import HFEngine

        return HFEngine(model, **options)
    if kind == "ct2":
        from mucode.engines.ct2 import CT2Engine

        return CT2Engine(model, **options)
    if kind == "openvino":
        from mucode.engines.openvino import OpenVINOEngine

        return OpenVINOEngine(model, **options)
    if kind == "sglang":
        from mucode.engines.sglang import make_sglang_engine

        return make_sglang_engine(model, **options)
    raise UnknownEngineError(f"unknown engine kind {kind!r}: use one of {', '.join(ENGINE_KINDS)}")
