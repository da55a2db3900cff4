"""Verifier stage: train R(x, y), a one-logit classifier over (problem, one answer).

The verifier is `AutoModelForSequenceClassification` (num_labels=1) on the base model,
re-initialised from the base model every iteration and trained on the whole aggregate:
its samples and pairs come from `mucode.verifier_data`, its trainers (Bradley–Terry `bt`
or pointwise `bce`, `VerifierConfig.loss`) from `mucode.verifier_trainers`.

Problems are split (`heldout_fraction`); the saved model is scored on the held-out
problems (`mucode.verifier_scorer.heldout_metrics`): pairwise accuracy on their pairs and
rank AUC of scores vs labels (NaN when the held-out labels are all one class, or nothing is
held out; `heldout_note` says why).
`method: lora` trains LoRA adapters plus the (fully trainable) score head and merges them
before saving, so the output is a plain one-logit model directory either way.
On GPUs the training runs under `accelerate launch` (see `mucode.training`), which runs `main`.
Training checkpoints as it goes: a killed stage, run again, resumes from its last checkpoint.
This module does not score downstream answers (`mucode.verifier_scorer`) and does not relabel.
"""

from __future__ import annotations

from mucode.orchestration import stage_task

import json
import math
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import polars as pl

from mucode.config import ComputeConfig, VerifierConfig
from mucode.training import (drop_trainer_state, entry_point_parser, is_main_process, launch_options, loss_log,
                             merge_saved_adapter, per_device_batch_size, release_memory, resumable_out_dir,
                             run_training, save_trained_model, train_resuming, trainable_model, write_metrics)
from mucode.verifier_data import VerifierInputError, preference_pairs, split_problems, verifier_input_ids, verifier_samples
from mucode.verifier_scorer import VerifierScorer, heldout_metrics
from mucode.verifier_trainers import (bce_training_arguments, centered_reward_trainer_class, labelled_collator,
                                      load_sequence_classifier, pointwise_trainer_class, reward_config)

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from mucode.models import ResolvedModel

# ---------------------------------------------------------------- training

def train_verifier(cfg: VerifierConfig, base_model: str | ResolvedModel, aggregated: pl.DataFrame, problems: pl.DataFrame,
                   out_dir: str, seed: int = 0, *, compute: ComputeConfig | None = None) -> dict[str, Any]:
    """Train a verifier on the aggregate and save it to `out_dir`; return its metrics.

    In this process on CPU; under `accelerate launch` when `compute.num_gpus` > 0.
    """
    from mucode.models import resolve

    compute = compute or ComputeConfig()
    base = resolve(base_model)
    training_data(cfg, aggregated, problems, seed)  # fail here, before any process is launched
    per_device_batch_size(cfg.batch_size, compute, cfg.gradient_accumulation_steps)
    options = launch_options("verifier", cfg, compute, base.path, out_dir, seed)
    return run_training("verifier", compute,
                        lambda: fit_verifier(cfg, compute, base, aggregated, problems, out_dir, seed),
                        {"aggregated": aggregated, "problems": problems}, options)


def training_data(cfg: VerifierConfig, aggregated: pl.DataFrame, problems: pl.DataFrame,
                  seed: int) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """(training samples, training pairs, held-out samples); one clear error when nothing can be learnt.

    The same answer to the same problem with the same label is one sample, however often
    rollouts produced it: the verifier judges texts, and repeats would only reweight them.
    """
    samples = verifier_samples(aggregated, problems).unique(subset=["task_id", "answer", "label"], keep="first",
                                                            maintain_order=True)
    train_ids, heldout_ids = split_problems(samples["task_id"].to_list(), cfg.heldout_fraction, seed)
    train_samples = samples.filter(pl.col("task_id").is_in(train_ids))
    pairs = preference_pairs(train_samples, cfg.pairs_per_problem, seed)
    if cfg.loss == "bt" and pairs.height == 0:
        raise VerifierInputError(
            f"no (passing, failing) answer pairs among {len(train_ids)} training problems: the BT loss needs a "
            "problem with both; use verifier.loss=bce, more rollouts, or a lower heldout_fraction"
        )
    return train_samples, pairs, samples.filter(pl.col("task_id").is_in(heldout_ids))


def fit_verifier(cfg: VerifierConfig, compute: ComputeConfig, base_model: str | ResolvedModel, aggregated: pl.DataFrame,
                 problems: pl.DataFrame, out_dir: str, seed: int) -> dict[str, Any]:
    """Train in this process (what each accelerate rank runs), save, then score the held-out problems."""
    from datasets import Dataset

    from mucode.models import resolve

    train_samples, pairs, heldout = training_data(cfg, aggregated, problems, seed)
    base_model = resolve(base_model)
    tokenizer = base_model.load_tokenizer(padding_side="right")

    def ids(prompts: Sequence[str], answers: Sequence[str]) -> list[list[int]]:
        return [verifier_input_ids(tokenizer, p, a, cfg.max_length) for p, a in zip(prompts, answers)]

    def trainable_verifier() -> PreTrainedModel:
        return trainable_model(load_sequence_classifier(base_model, tokenizer.pad_token_id, seed), cfg.method,
                               cfg.lora, cfg.train_top_layers, "SEQ_CLS")

    # Training arguments first: under DeepSpeed ZeRO-3 they make from_pretrained shard while loading.
    if cfg.loss == "bt":
        args = reward_config(cfg, compute, out_dir, seed)
        dataset = Dataset.from_dict({"chosen_ids": ids(pairs["prompt"], pairs["chosen"]),
                                     "rejected_ids": ids(pairs["prompt"], pairs["rejected"])})
        model = trainable_verifier()
        trainer = centered_reward_trainer_class()(model=model, args=args, train_dataset=dataset,
                                                  processing_class=tokenizer,
                                                  center_coefficient=cfg.center_coefficient)
    else:
        args = bce_training_arguments(cfg, compute, out_dir, seed)
        dataset = Dataset.from_dict({"input_ids": ids(train_samples["prompt"], train_samples["answer"]),
                                     "labels": train_samples["label"].cast(pl.Float64).to_list()})
        model = trainable_verifier()
        trainer = pointwise_trainer_class()(model=model, args=args, train_dataset=dataset,
                                            data_collator=labelled_collator(tokenizer.pad_token_id),
                                            processing_class=tokenizer)
    result = train_resuming(trainer, compute.checkpoint_every_s)
    save_trained_model(trainer, cfg.method, out_dir)
    metrics: dict[str, Any] = {
        "loss": cfg.loss,
        "method": cfg.method,
        "train_problems": train_samples["task_id"].n_unique(),
        "train_samples": train_samples.height,
        "train_pairs": pairs.height,
        "train_runtime_s": float(result.metrics.get("train_runtime", math.nan)),
        "loss_log": loss_log(trainer.state.log_history),
    }
    del trainer, model
    release_memory()
    if is_main_process():
        if cfg.method == "lora":
            merge_saved_adapter(lambda: load_sequence_classifier(base_model, tokenizer.pad_token_id, seed), out_dir)
        drop_trainer_state(out_dir)
        tokenizer.save_pretrained(out_dir)
        scorer = VerifierScorer(out_dir, batch_size=16, max_length=cfg.max_length)
        metrics |= heldout_metrics(scorer, heldout, cfg.pairs_per_problem, seed)
    return metrics


# ---------------------------------------------------------------- entry point (what accelerate launches)

def main(argv: Sequence[str] | None = None) -> None:
    parser = entry_point_parser("verifier")
    parser.add_argument("--aggregated", required=True, help="Parquet of the aggregate")
    parser.add_argument("--problems", required=True, help="Parquet of the problems")
    args = parser.parse_args(argv)
    sections = json.loads(args.config_json)
    cfg = VerifierConfig.model_validate(sections["verifier"])
    compute = ComputeConfig.model_validate(sections["compute"])
    metrics = fit_verifier(cfg, compute, args.base, pl.read_parquet(args.aggregated), pl.read_parquet(args.problems),
                           args.out, args.seed)
    write_metrics(args.metrics, metrics)


# The config sections the stage reads: its cache key and its manifest's config hash.
SECTIONS = ("model", "verifier", "compute", "seed")


def verifier_stage(cfg, root: str, aggregated, problems):
    """Store-level stage: train a fresh verifier from the base model on the aggregate."""
    from mucode.artifacts import ArtifactStore

    store = ArtifactStore(root)
    config_hash, inputs = cfg.section_digest(*SECTIONS), [aggregated.hash, problems.hash]
    with resumable_out_dir(store, "verifier", config_hash, inputs) as out_dir:
        metrics = train_verifier(cfg.verifier, cfg.model.name, store.get_frame(aggregated), store.get_frame(problems),
                                 out_dir, seed=cfg.seed, compute=cfg.compute)
        return store.put_dir(out_dir, stage="verifier", config_hash=config_hash, inputs=inputs,
                             extra={"metrics": metrics})


# The Prefect task: cached on the config sections read and the input artifacts' hashes.
verifier_task = stage_task(verifier_stage, name="verifier", sections=SECTIONS, gpu=True)


if __name__ == "__main__":
    main(sys.argv[1:])
