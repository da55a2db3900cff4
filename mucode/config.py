"""The one typed configuration of a mucode experiment, loaded from YAML.

Every stage reads its settings from a section of `Config`. Unknown keys and bad values are
rejected with one line naming the key (`ConfigError`). This module does not decide
defaults for hardware it cannot see: `configs/*.yaml` carry the paper's and the smoke
settings.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mucode.hashing import json_digest

BUNDLED_MODEL = "bundled:smollm2-135m-instruct"
Policy = Literal["mucode", "rft", "oracle", "mucode-r", "mucode-solved", "single-turn-rft"]
VERIFIER_POLICIES = ("mucode", "mucode-r", "mucode-solved")  # the relabel policies that score answers with the verifier
Selection = Literal["random", "lv", "pt", "pt+lv"]


class ConfigError(ValueError):
    """A configuration file or override is wrong; the message is one line."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelConfig(Section):
    name: str = BUNDLED_MODEL
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"


class DataConfig(Section):
    train_dataset: Literal["mbpp", "codecontests"] = "mbpp"
    train_split: str = "train"
    train_limit: int | None = Field(default=None, ge=1)
    # Problems drawn from the training split by `train_sample_seed` (None: all): the paper
    # trains on 1,000 sampled CodeContests problems. The limit applies after the draw.
    train_sample: int | None = Field(default=None, ge=1)
    train_sample_seed: int = 0
    eval_datasets: list[Literal["humaneval", "mbpp", "mbpp-plus", "humaneval-plus", "codecontests"]] = [
        "humaneval",
        "mbpp",
    ]
    eval_split: str = "test"
    eval_limit: int | None = Field(default=None, ge=1)
    data_dir: str | None = None


class SamplingConfig(Section):
    temperature: float = Field(default=0.7, ge=0.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    max_new_tokens: int = Field(default=1000, ge=1)


class EngineConfig(Section):
    kind: Literal["hf", "ct2", "openvino", "sglang"] = "hf"
    batch_size: int = Field(default=8, ge=1)
    # ct2 only: int8 weights (default, fastest on CPU) or float32 (matches hf closely).
    compute_type: Literal["int8", "int8_float32", "int16", "float32"] = "int8"
    tp_size: int = Field(default=1, ge=1)
    dp_size: int = Field(default=1, ge=1)
    mem_fraction_static: float = Field(default=0.8, gt=0.0, le=1.0)


class RolloutConfig(Section):
    num_rollouts: int = Field(default=15, ge=1)
    max_turns: int = Field(default=3, ge=1)
    sampling: SamplingConfig = SamplingConfig()


class SandboxConfig(Section):
    backend: Literal["auto", "local", "docker"] = "auto"
    workers: int | None = Field(default=None, ge=1)
    timeout_s: float = Field(default=10.0, gt=0.0)
    memory_mb: int = Field(default=1024, ge=64)


TrainingMethod = Literal["full", "lora"]


class LoraSettings(Section):
    """LoRA adapters (peft) for `method: lora`; merged into the weights before the stage saves."""

    rank: int = Field(default=16, ge=1)
    alpha: int = Field(default=32, ge=1)
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    # peft's "all-linear" = every linear layer of the decoder except the output head.
    target_modules: Literal["all-linear"] | list[str] = "all-linear"

    @model_validator(mode="after")
    def _named_modules(self) -> "LoraSettings":
        if isinstance(self.target_modules, list) and (not self.target_modules or not all(self.target_modules)):
            raise ValueError("target_modules must be 'all-linear' or a non-empty list of module names (e.g. q_proj)")
        return self


class VerifierConfig(Section):
    method: TrainingMethod = "full"
    lora: LoraSettings = LoraSettings()
    # Train only the top k decoder layers (None: all); backward then stops below them.
    train_top_layers: int | None = Field(default=None, ge=1)
    loss: Literal["bt", "bce"] = "bt"
    pairs_per_problem: int = Field(default=32, ge=1)
    center_coefficient: float = Field(default=1e-3, ge=0.0)
    learning_rate: float = Field(default=1e-6, gt=0.0)
    epochs: float = Field(default=2.0, gt=0.0)
    batch_size: int = Field(default=64, ge=1)
    # batch_size is split into this many micro-batches (less activation memory, same update)
    gradient_accumulation_steps: int = Field(default=1, ge=1)
    max_length: int = Field(default=2048, ge=16)
    heldout_fraction: float = Field(default=0.1, ge=0.0, lt=1.0)


class RelabelConfig(Section):
    policy: Policy = "mucode"
    beta_oracle: float = 100.0
    beta_verifier: float = 1.0


class FinetuneConfig(Section):
    method: TrainingMethod = "full"
    lora: LoraSettings = LoraSettings()
    # Train only the top k decoder layers (None: all); backward then stops below them.
    train_top_layers: int | None = Field(default=None, ge=1)
    learning_rate: float = Field(default=5e-7, gt=0.0)
    epochs: float = Field(default=2.0, gt=0.0)
    batch_size: int = Field(default=16, ge=1)
    gradient_accumulation_steps: int = Field(default=1, ge=1)
    max_length: int = Field(default=8192, ge=16)


class EvaluationConfig(Section):
    n: int = Field(default=5, ge=1)
    turns: int = Field(default=3, ge=1)
    searches: int = Field(default=10, ge=1)
    selection: Selection = "pt+lv"
    scaling_ns: list[int] = [1, 2, 4, 8]
    sampling: SamplingConfig = SamplingConfig()
    # True: a search stops generating at its first public pass (its submission); BoN@t is
    # unchanged, solved@t and pass@k then count the submission. False (the release): all T turns.
    stop_at_public_pass: bool = False


class CompareConfig(Section):
    """The `mucode-compare` flow: which training policies (arms) run from the same base
    rollouts, and which BoN selection rules the µCode arm is also evaluated with."""

    arms: list[Policy] = ["mucode", "rft", "oracle"]
    ablation_selections: list[Selection] = ["random", "lv", "pt", "pt+lv"]
    ablation_datasets: list[str] | None = None  # None: every evaluation dataset
    # The methods evaluated at N = evaluation.n: `base`, an arm, `<arm>@iter<i>` or
    # `strongest-baseline` (the best N=1 baseline, chosen at run time); None: every one.
    bon_methods: list[str] | None = None
    bon_datasets: list[str] | None = None  # None: every evaluation dataset
    bootstrap_resamples: int = Field(default=1000, ge=100)

    @model_validator(mode="after")
    def _distinct_arms(self) -> "CompareConfig":
        if not self.arms or len(set(self.arms)) != len(self.arms):
            raise ValueError(f"arms must be distinct and non-empty, got {self.arms}")
        for method in self.bon_methods or []:
            if method not in ("base", "strongest-baseline") and method.split("@iter")[0] not in self.arms:
                raise ValueError(f"bon_methods entry {method!r} is not base, strongest-baseline or one of the arms "
                                 f"{self.arms} (optionally <arm>@iter<i>)")
        return self


class NightlyConfig(Section):
    """What `mucode-iteration` evaluates after each iteration: this generator, the previous one and
    the base model on a fixed subset (the first `limit` problems of each dataset's eval split), with
    `evaluation`'s settings; a Markdown run artifact and ROOT/nightly.jsonl + nightly.png."""

    enabled: bool = True
    datasets: list[Literal["humaneval", "mbpp", "mbpp-plus", "humaneval-plus", "codecontests"]] | None = None  # None: data.eval_datasets
    limit: int = Field(default=20, ge=1)


class ComputeConfig(Section):
    num_gpus: int = Field(default=0, ge=0)
    distributed: Literal["none", "deepspeed-zero3", "fsdp"] = "none"
    bf16: bool = False
    gradient_checkpointing: bool = False
    dask_address: str | None = None
    # A training stage saves a checkpoint after this many seconds of training (longer when
    # saving is slow), and a killed stage run again resumes from it; None: no checkpoints.
    checkpoint_every_s: float | None = Field(default=600.0, gt=0)


class Config(Section):
    """A whole experiment: M iterations of µCode plus evaluation."""

    name: str = "smoke"
    run_dir: str = "runs"
    iterations: int = Field(default=2, ge=1)
    seed: int = 0
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    engine: EngineConfig = EngineConfig()
    rollout: RolloutConfig = RolloutConfig()
    sandbox: SandboxConfig = SandboxConfig()
    verifier: VerifierConfig = VerifierConfig()
    relabel: RelabelConfig = RelabelConfig()
    finetune: FinetuneConfig = FinetuneConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    compute: ComputeConfig = ComputeConfig()
    compare: CompareConfig = CompareConfig()
    nightly: NightlyConfig = NightlyConfig()

    @model_validator(mode="after")
    def _gpu_settings_need_gpus(self) -> "Config":
        if self.engine.kind == "sglang" and self.compute.num_gpus == 0:
            raise ValueError("engine.kind sglang needs compute.num_gpus >= 1")
        if self.compute.distributed != "none" and self.compute.num_gpus < 2:
            raise ValueError("compute.distributed needs compute.num_gpus >= 2")
        return self

    def digest(self) -> str:
        """A stable hash of the settings (cache keys, manifests)."""
        return json_digest(self.model_dump(mode="json"))

    def section_digest(self, *names: str) -> str:
        """A stable hash of only the named sections, so a stage's cache key ignores the rest."""
        dumped = self.model_dump(mode="json")
        return json_digest({name: dumped[name] for name in names})


def _error_line(error: ValidationError, source: str) -> str:
    first = error.errors()[0]
    key = ".".join(str(part) for part in first["loc"]) or "(top level)"
    if first["type"] == "extra_forbidden":
        return f"{source}: unknown key '{key}': remove it or check its spelling against mucode/config.py"
    return f"{source}: bad value for '{key}': {first['msg']} (got {first.get('input')!r})"


def parse_config(raw: dict[str, Any], source: str = "config") -> Config:
    try:
        return Config.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(_error_line(error, source)) from None


def apply_overrides(raw: dict[str, Any], overrides: list[str] | dict[str, Any]) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides (value parsed as YAML) to a raw config mapping."""
    pairs = overrides.items() if isinstance(overrides, dict) else [_split_override(o) for o in overrides]
    merged = json.loads(json.dumps(raw))
    for dotted, value in pairs:
        node = merged
        *parents, leaf = dotted.split(".")
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override '{dotted}': '{part}' is not a section")
            node = child
        node[leaf] = value
    return merged


def _split_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like section.key=value")
    key, value = text.split("=", 1)
    return key.strip(), yaml.safe_load(value)


def load_config(path: str | Path, overrides: list[str] | dict[str, Any] | None = None) -> Config:
    """Read a YAML config and apply overrides; one-line ConfigError on any problem."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist: pass one of configs/*.yaml")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return parse_config(apply_overrides(raw, overrides or []), source=str(path))
