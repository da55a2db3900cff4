"""Builds what a stage runs with from the config: the resolved model, an engine, a sandbox.

One place maps config sections onto `mucode.models`, `mucode.engines` and `mucode.sandbox`,
so the rollout and evaluation stages start them the same way. Nothing is started at import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mucode.artifacts import Artifact, ArtifactStore
from mucode.config import Config, SamplingConfig

if TYPE_CHECKING:
    from mucode.models import ResolvedModel


def generator_model(cfg: Config, store: ArtifactStore, model: Artifact | None) -> ResolvedModel:
    """A stored model, or the base model when None, resolved once for the stage."""
    from mucode.models import resolve

    return resolve(cfg.model.name if model is None else store.get_dir(model))


def model_hash(cfg: Config, model: Artifact | None) -> str:
    """What identifies a generator in manifests and rows: artifact hash, or the base model name."""
    return model.hash if model is not None else f"base:{cfg.model.name}"


def make_engine_from_config(cfg: Config, model: str | ResolvedModel):
    from mucode.engines import make_engine

    if cfg.engine.kind == "sglang":
        return make_engine("sglang", model, tp_size=cfg.engine.tp_size, dp_size=cfg.engine.dp_size,
                           mem_fraction_static=cfg.engine.mem_fraction_static, dtype=cfg.model.dtype,
                           batch_size=cfg.engine.batch_size)
    if cfg.engine.kind == "ct2":
        return make_engine("ct2", model, batch_size=cfg.engine.batch_size, compute_type=cfg.engine.compute_type)
    if cfg.engine.kind == "openvino":
        return make_engine("openvino", model, batch_size=cfg.engine.batch_size)
    return make_engine("hf", model, batch_size=cfg.engine.batch_size, dtype=cfg.model.dtype)


GENERATIONS_DIR = "generations"  # under the experiment directory: engine replies kept by call


def generator_key(generator: Artifact | None, model: ResolvedModel) -> Any:
    """What decides a generator's replies: its artifact hash, or for the base model (named, not
    stored) the fingerprint of its files, so a replaced model at the same path is another key."""
    from mucode.eval_checkpoint import files_fingerprint

    return generator.hash if generator is not None else files_fingerprint(model.path)


def memoized_engine(cfg: Config, store: ArtifactStore, model: ResolvedModel, key: Any):
    """The config's engine for `model` (`key`: its `generator_key`), with its `generate` calls kept
    on disk under ROOT/generations/ (`mucode.generation_memo`): an identical call, such as another
    selection rule's first turn or a killed stage run again, reads the replies back."""
    from mucode.code_digest import stage_code
    from mucode.generation_memo import MemoizedEngine
    from mucode.hashing import json_digest

    identity = json_digest([cfg.section_digest("model", "engine"), key, stage_code("mucode.engines").digest])
    return MemoizedEngine(make_engine_from_config(cfg, model), store.local_folder(GENERATIONS_DIR), identity)


def make_sandbox_from_config(cfg: Config):
    from mucode.sandbox import make_sandbox

    return make_sandbox(cfg.sandbox.backend, workers=cfg.sandbox.workers,
                        timeout_s=cfg.sandbox.timeout_s, memory_mb=cfg.sandbox.memory_mb)


def sampling_params(sampling: SamplingConfig, seed: int):
    from mucode.engines import SamplingParams

    return SamplingParams(temperature=sampling.temperature, top_p=sampling.top_p,
                          max_new_tokens=sampling.max_new_tokens, seed=seed)

