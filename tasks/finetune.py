"""Fine-tune stage: SFT of the base model on the relabelled conversations.

Every iteration starts again from the base model and trains on everything relabelled so
far. Each SFT row becomes a prompt–completion conversational example (prompt = the
conversation prefix, completion = [assistant: target]) and is tokenised by
`tokenize_sft_example`: the prompt with the generation header, then the answer up to and
including the template's end-of-turn token (for SmolLM2 `<|im_end|>`; the newline the
template writes after it is never generated, so it is dropped). The loss mask covers
exactly the answer and that end token. TRL's `SFTTrainer` trains on these tokens with
`completion_only_loss`. Full fine-tune by default; `method: lora` trains LoRA adapters,
merged into the weights before saving, so the output is always a plain safetensors model directory.
On CPU it runs here in fp32; with GPUs under `accelerate launch` (see `mucode.training`),
checkpointing as it goes: a killed stage, run again, resumes from its last checkpoint.
This module does not choose targets (that is `relabel`) and does not generate.
"""

from __future__ import annotations

from mucode.orchestration import stage_task

import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import polars as pl

from mucode.columns import require_columns
from mucode.config import ComputeConfig, FinetuneConfig
from mucode.models import ResolvedModel, resolve
from mucode.training import (drop_trainer_state, entry_point_parser, is_main_process, launch_options, loss_log,
                             merge_saved_adapter, per_device_batch_size, release_memory, resumable_out_dir,
                             run_training, save_trained_model, train_resuming, trainer_arguments, trainable_model,
                             write_metrics)

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

SFT_COLUMNS = ("prompt_messages", "completion")

Message = dict[str, str]


class FinetuneInputError(ValueError):
    """The SFT data or the tokenizer cannot be used for fine-tuning; the message is one line."""


# ---------------------------------------------------------------- examples and their loss mask

def sft_conversations(sft: pl.DataFrame) -> list[dict[str, list[Message]]]:
    """TRL's prompt–completion conversational form of each SFT row."""
    check_sft(sft)
    return [
        {"prompt": json.loads(prompt), "completion": [{"role": "assistant", "content": completion}]}
        for prompt, completion in zip(sft["prompt_messages"], sft["completion"])
    ]


def end_of_turn_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The token that ends an assistant turn: the tokenizer's eos (where generation stops)."""
    if tokenizer.eos_token_id is None:
        raise FinetuneInputError("the tokenizer has no eos token: the model could not learn to end its turn")
    return tokenizer.eos_token_id


def tokenize_sft_example(tokenizer: PreTrainedTokenizerBase, prompt: list[Message], completion: list[Message],
                         max_length: int) -> dict[str, list[int]] | None:
    """input_ids and completion_mask (1 = trained) of one example; None when the prompt fills max_length.

    The prompt is tokenised on its own, as the generator sees it at inference, and the
    completion text after it separately, so no token straddles the boundary.
    """
    prompt_text = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    full_text = tokenizer.apply_chat_template(prompt + completion, tokenize=False)
    if not full_text.startswith(prompt_text):
        raise FinetuneInputError("the chat template renders the prompt differently once the answer follows it: "
                                 "the completion mask cannot be located; use a model with a prefix-stable template")
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    completion_ids = tokenizer(full_text[len(prompt_text):], add_special_tokens=False)["input_ids"]
    end_id = end_of_turn_id(tokenizer)
    if end_id not in completion_ids:
        raise FinetuneInputError(f"the chat template does not end the assistant turn with the eos token "
                                 f"{tokenizer.eos_token!r}: set the tokenizer's eos to the end-of-turn token")
    # Keep the answer through its (last) end-of-turn token; what follows is never generated.
    last_end = len(completion_ids) - 1 - completion_ids[::-1].index(end_id)
    completion_ids = completion_ids[: last_end + 1]
    input_ids = (prompt_ids + completion_ids)[:max_length]
    completion_mask = ([0] * len(prompt_ids) + [1] * len(completion_ids))[:max_length]
    if 1 not in completion_mask:
        return None
    return {"input_ids": input_ids, "completion_mask": completion_mask}


def tokenize_sft(tokenizer: PreTrainedTokenizerBase, sft: pl.DataFrame,
                 max_length: int) -> tuple[list[dict[str, list[int]]], dict[str, int]]:
    """The tokenised examples, and counts of those dropped (prompt too long) or cut short."""
    examples, dropped, truncated = [], 0, 0
    for conversation in sft_conversations(sft):
        example = tokenize_sft_example(tokenizer, conversation["prompt"], conversation["completion"], max_length)
        if example is None:
            dropped += 1
            continue
        truncated += example["input_ids"][-1] != end_of_turn_id(tokenizer)
        examples.append(example)
    if not examples:
        raise FinetuneInputError(f"all {sft.height} SFT examples have prompts of {max_length}+ tokens: "
                                 "raise finetune.max_length")
    return examples, {"examples": len(examples), "dropped_long_prompt": dropped, "truncated_completion": truncated}


def check_sft(sft: pl.DataFrame) -> None:
    require_columns(sft, SFT_COLUMNS, FinetuneInputError, "the SFT frame", "pass the output of the relabel stage")
    if sft.height == 0:
        raise FinetuneInputError("the SFT frame is empty: the relabel policy produced no examples "
                                 "(rft/oracle need at least one passing answer)")


# ---------------------------------------------------------------- trainer configs

def sft_config(cfg: FinetuneConfig, compute: ComputeConfig, out_dir: str, seed: int):
    """TRL `SFTConfig`: loss on the completion mask only, no packing."""
    from trl import SFTConfig

    return SFTConfig(
        **trainer_arguments(compute, out_dir, seed, learning_rate=cfg.learning_rate, epochs=cfg.epochs,
                            global_batch=cfg.batch_size, accumulation_steps=cfg.gradient_accumulation_steps),
        max_length=cfg.max_length,
        completion_only_loss=True,
        assistant_only_loss=False,
        packing=False,
    )


def build_sft_trainer(cfg: FinetuneConfig, compute: ComputeConfig, base_model: str | ResolvedModel,
                      examples: list[dict[str, list[int]]], out_dir: str, seed: int):
    """TRL's SFTTrainer over tokenised examples, on a fresh fp32 copy of the base model (LoRA-wrapped if asked)."""
    from datasets import Dataset
    from transformers import set_seed
    from trl import SFTTrainer

    base = resolve(base_model)
    # Config first: under DeepSpeed ZeRO-3 it makes from_pretrained shard while loading.
    args = sft_config(cfg, compute, out_dir, seed)
    set_seed(seed)
    model = trainable_model(load_causal_lm(base), cfg.method, cfg.lora, cfg.train_top_layers, "CAUSAL_LM")
    return SFTTrainer(model=model, args=args,
                      train_dataset=Dataset.from_list(examples),
                      processing_class=base.load_tokenizer(padding_side="right"))


# ---------------------------------------------------------------- training

def finetune(cfg: FinetuneConfig, compute: ComputeConfig, base_model: str | ResolvedModel, sft: pl.DataFrame, out_dir: str,
             seed: int = 0) -> dict[str, Any]:
    """Fine-tune the base model on `sft` and save it to `out_dir`; return the metrics.

    In this process on CPU; under `accelerate launch` when `compute.num_gpus` > 0.
    """
    check_sft(sft)
    per_device_batch_size(cfg.batch_size, compute, cfg.gradient_accumulation_steps)  # fail before launching
    base = resolve(base_model)
    options = launch_options("finetune", cfg, compute, base.path, out_dir, seed)
    return run_training("finetune", compute, lambda: run_sft(cfg, compute, base, sft, out_dir, seed),
                        {"sft": sft}, options)


def run_sft(cfg: FinetuneConfig, compute: ComputeConfig, base_model: str | ResolvedModel, sft: pl.DataFrame, out_dir: str,
            seed: int) -> dict[str, Any]:
    """Train in this process (what each accelerate rank runs) and save a plain model directory."""
    base = resolve(base_model)
    tokenizer = base.load_tokenizer(padding_side="right")
    examples, counts = tokenize_sft(tokenizer, sft, cfg.max_length)
    trainer = build_sft_trainer(cfg, compute, base, examples, out_dir, seed)
    result = train_resuming(trainer, compute.checkpoint_every_s)
    trainer.model.config.use_cache = True  # the Trainer switched it off for training; generation wants it
    save_trained_model(trainer, cfg.method, out_dir)
    metrics: dict[str, Any] = {
        **counts,
        "method": cfg.method,
        "completion_tokens": sum(sum(e["completion_mask"]) for e in examples),
        "train_runtime_s": float(result.metrics.get("train_runtime", float("nan"))),
        "loss_log": loss_log(trainer.state.log_history),
    }
    del trainer
    release_memory()
    if is_main_process():
        if cfg.method == "lora":
            merge_saved_adapter(lambda: load_causal_lm(base), out_dir)
        drop_trainer_state(out_dir)
        tokenizer.save_pretrained(out_dir)
    return metrics


def load_causal_lm(base_model: str | ResolvedModel):
    """A fresh fp32 copy of the base model (mixed precision is the trainer's job)."""
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(resolve(base_model).path, dtype=torch.float32)


# ---------------------------------------------------------------- entry point (what accelerate launches)

def main(argv: Sequence[str] | None = None) -> None:
    parser = entry_point_parser("finetune")
    parser.add_argument("--sft", required=True, help="Parquet of the relabelled SFT rows")
    args = parser.parse_args(argv)
    sections = json.loads(args.config_json)
    cfg = FinetuneConfig.model_validate(sections["finetune"])
    compute = ComputeConfig.model_validate(sections["compute"])
    metrics = run_sft(cfg, compute, args.base, pl.read_parquet(args.sft), args.out, args.seed)
    write_metrics(args.metrics, metrics)


# The config sections the stage reads: its cache key and its manifest's config hash.
SECTIONS = ("model", "finetune", "compute", "seed")


def finetune_stage(cfg, root: str, sft):
    """Store-level stage: fine-tune the base model on the stored SFT dataset."""
    from mucode.artifacts import ArtifactStore

    store = ArtifactStore(root)
    config_hash, inputs = cfg.section_digest(*SECTIONS), [sft.hash]
    with resumable_out_dir(store, "finetune", config_hash, inputs) as out_dir:
        metrics = finetune(cfg.finetune, cfg.compute, cfg.model.name, store.get_frame(sft), out_dir, seed=cfg.seed)
        return store.put_dir(out_dir, stage="finetune", config_hash=config_hash, inputs=inputs,
                             extra={"metrics": metrics})


# The Prefect task: cached on the config sections read and the input artifacts' hashes.
finetune_task = stage_task(finetune_stage, name="finetune", sections=SECTIONS, gpu=True)


if __name__ == "__main__":
    main(sys.argv[1:])
