"""Verifier stage: train R(x, y), a one-logit classifier over (problem, one answer), and score with it.

The verifier is `AutoModelForSequenceClassification` (num_labels=1) on the base model,
re-initialised from the base model every iteration and trained on the whole aggregate.
Its input is the tokenizer's chat template over [user: first user message, assistant:
answer] (`verifier_text`, the same at train and score time), not the conversation history.
Samples are every aggregated assistant turn, labelled with the rollout's oracle outcome
on the final turn and 0 on earlier turns. Two losses (`VerifierConfig.loss`):

- `bt`: Bradley–Terry on (passing, failing) answer pairs of the same problem, drawn per
  problem with a seeded RNG, plus `center_coefficient` · mean(r²) over the batch's
  rewards. TRL's `RewardTrainer` does the pairing and BT loss; its own centring term is
  mean((r_chosen + r_rejected)²), a different quantity, so ours is added by a subclass.
- `bce`: pointwise binary cross-entropy of the logit on the label.

Problems are split (`heldout_fraction`); the saved model is scored on the held-out
problems: pairwise accuracy on their pairs and rank AUC of scores vs labels (NaN when the
held-out labels are all one class, or nothing is held out; `heldout_note` says why).
`method: lora` trains LoRA adapters plus the (fully trainable) score head and merges them
before saving, so the output is a plain one-logit model directory either way.
On GPUs the training runs under `accelerate launch` (see `mucode.training`).
This module does not relabel and does not decide which answers get scored downstream.
"""

from __future__ import annotations

from mucode.orchestration import stage_task

import json
import math
import random
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import polars as pl

from mucode.columns import require_columns
from mucode.config import ComputeConfig, VerifierConfig
from mucode.prompts import first_user_message
from mucode.training import (drop_trainer_state, entry_point_parser, is_main_process, launch_options, loss_log,
                             merge_saved_adapter, per_device_batch_size, release_memory, run_training,
                             save_trained_model, trainable_model, trainer_arguments, write_metrics)

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

AGGREGATE_COLUMNS = ("task_id", "response", "final", "oracle_passed")
PROBLEM_COLUMNS = ("task_id", "dataset", "prompt", "public_tests")


class VerifierInputError(ValueError):
    """The data cannot train or be scored by a verifier; the message is one line."""


# ---------------------------------------------------------------- input text and tokens

def verifier_text(tokenizer: PreTrainedTokenizerBase, prompt: str, answer: str) -> str:
    """What the verifier reads: the chat template over [user: prompt, assistant: answer]."""
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
    return tokenizer.apply_chat_template(messages, tokenize=False)


def verifier_input_ids(tokenizer: PreTrainedTokenizerBase, prompt: str, answer: str, max_length: int) -> list[int]:
    """Token ids of `verifier_text`, cut to the first `max_length` tokens.

    The template already holds the special tokens, so none are added again.
    """
    text = verifier_text(tokenizer, prompt, answer)
    return tokenizer(text, add_special_tokens=False, truncation=True, max_length=max_length)["input_ids"]


# ---------------------------------------------------------------- samples, split, pairs

def problem_prompts(problems: pl.DataFrame) -> pl.DataFrame:
    """task_id → prompt: the first user message of each problem (what the verifier is shown)."""
    require_columns(problems, PROBLEM_COLUMNS, VerifierInputError, "the problems frame", "pass the problems the rollouts were made from")
    return problems.unique(subset=["task_id"], keep="first", maintain_order=True).select(
        "task_id",
        pl.struct("prompt", "public_tests", "dataset")
        .map_elements(lambda row: first_user_message(row["prompt"], row["public_tests"], row["dataset"]),
                      return_dtype=pl.String)
        .alias("prompt"),
    )


def with_prompts(rows: pl.DataFrame, problems: pl.DataFrame) -> pl.DataFrame:
    """`rows` (with task_id) plus each problem's prompt; unknown task ids are one clear error."""
    prompts = problem_prompts(problems)
    unknown = sorted(set(rows["task_id"]) - set(prompts["task_id"]))
    if unknown:
        raise VerifierInputError(
            f"the aggregate names {len(unknown)} task ids not in the problems frame (e.g. {unknown[0]}): "
            "pass the problems the rollouts were made from"
        )
    return rows.join(prompts, on="task_id", how="left", maintain_order="left")


def verifier_samples(aggregated: pl.DataFrame, problems: pl.DataFrame) -> pl.DataFrame:
    """One row per aggregated assistant turn: task_id, prompt, answer, label.

    prompt = the problem's first user message; label = the oracle outcome on a rollout's
    final turn, False on earlier turns.
    """
    require_columns(aggregated, AGGREGATE_COLUMNS, VerifierInputError, "the aggregate", "pass the output of the aggregate stage")
    if aggregated.height == 0:
        raise VerifierInputError("the aggregate is empty: run the rollout, execute and aggregate stages first")
    return with_prompts(aggregated, problems).select(
        "task_id",
        "prompt",
        pl.col("response").alias("answer"),
        (pl.col("final") & pl.col("oracle_passed")).alias("label"),
    )


def split_problems(task_ids: Sequence[str], heldout_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(train, held-out) task ids: a seeded shuffle; at least one problem stays in training."""
    unique_ids = sorted(set(task_ids))
    shuffled = unique_ids.copy()
    random.Random(seed).shuffle(shuffled)
    heldout_count = min(round(heldout_fraction * len(unique_ids)), max(len(unique_ids) - 1, 0))
    heldout = set(shuffled[:heldout_count])
    return [t for t in unique_ids if t not in heldout], [t for t in unique_ids if t in heldout]


def preference_pairs(samples: pl.DataFrame, pairs_per_problem: int, seed: int) -> pl.DataFrame:
    """(chosen = passing, rejected = failing) answer pairs of the same problem.

    Per problem (in task-id order) the distinct passing and failing answers are sorted; all
    pairs are kept when there are at most `pairs_per_problem`, otherwise that many distinct
    pairs are drawn with one RNG seeded by `seed`. Problems without both kinds give none.
    """
    rng = random.Random(seed)
    rows: list[tuple[str, str, str, str]] = []
    for (task_id,), group in samples.sort("task_id").group_by("task_id", maintain_order=True):
        passing = sorted(set(group.filter(pl.col("label"))["answer"]))
        failing = sorted(set(group.filter(~pl.col("label"))["answer"]) - set(passing))
        total = len(passing) * len(failing)
        if total == 0:
            continue
        picks = range(total) if total <= pairs_per_problem else sorted(rng.sample(range(total), pairs_per_problem))
        prompt = group["prompt"][0]
        rows += [(task_id, prompt, passing[i // len(failing)], failing[i % len(failing)]) for i in picks]
    return pl.DataFrame(rows, schema={"task_id": pl.String, "prompt": pl.String, "chosen": pl.String,
                                      "rejected": pl.String}, orient="row")


# ---------------------------------------------------------------- held-out metrics

def average_ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks of `values`; tied values share the mean of their positions."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for position in range(start, end + 1):
            ranks[order[position]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def roc_auc(scores: Sequence[float], labels: Sequence[bool]) -> float:
    """Area under the ROC curve by the Mann–Whitney U statistic (ties count one half).

    NaN when the labels hold one class only: the AUC is undefined then.
    """
    positives = sum(1 for label in labels if label)
    negatives = len(labels) - positives
    if positives == 0 or negatives == 0:
        return math.nan
    rank_sum = sum(rank for rank, label in zip(average_ranks(scores), labels) if label)
    return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)


def pairwise_accuracy(chosen_scores: Sequence[float], rejected_scores: Sequence[float]) -> float:
    """The fraction of pairs whose chosen answer scores strictly higher; NaN without pairs."""
    if not chosen_scores:
        return math.nan
    return sum(c > r for c, r in zip(chosen_scores, rejected_scores)) / len(chosen_scores)


def heldout_metrics(scorer: VerifierScorer, heldout: pl.DataFrame, pairs_per_problem: int, seed: int) -> dict[str, Any]:
    """Pairwise accuracy and AUC of `scorer` on held-out samples (NaN with a note when undefined)."""
    distinct = heldout.unique(subset=["task_id", "answer", "label"], keep="first", maintain_order=True)
    pairs = preference_pairs(heldout, pairs_per_problem, seed)
    scores = scorer.score(distinct["prompt"].to_list(), distinct["answer"].to_list()) if distinct.height else []
    score_of = {(t, a): s for t, a, s in zip(distinct["task_id"], distinct["answer"], scores)}
    chosen = [score_of[(t, a)] for t, a in zip(pairs["task_id"], pairs["chosen"])]
    rejected = [score_of[(t, a)] for t, a in zip(pairs["task_id"], pairs["rejected"])]
    metrics: dict[str, Any] = {
        "heldout_samples": distinct.height,
        "heldout_pairs": pairs.height,
        "heldout_pair_accuracy": pairwise_accuracy(chosen, rejected),
        "heldout_auc": roc_auc(scores, distinct["label"].to_list()),
    }
    if math.isnan(metrics["heldout_auc"]):
        metrics["heldout_note"] = ("held-out AUC is NaN: no held-out problems" if distinct.height == 0 else
                                   "held-out AUC is NaN: the held-out labels are all one class")
    return metrics


# ---------------------------------------------------------------- trainers and their configs

def reward_config(cfg: VerifierConfig, compute: ComputeConfig, out_dir: str, seed: int):
    """TRL `RewardConfig` for the Bradley–Terry loss (our centring term is added by the trainer)."""
    from trl import RewardConfig

    return RewardConfig(
        **trainer_arguments(compute, out_dir, seed, learning_rate=cfg.learning_rate, epochs=cfg.epochs,
                            global_batch=cfg.batch_size, accumulation_steps=cfg.gradient_accumulation_steps),
        max_length=cfg.max_length,
        center_rewards_coefficient=None,
    )


def bce_training_arguments(cfg: VerifierConfig, compute: ComputeConfig, out_dir: str, seed: int):
    """transformers `TrainingArguments` for the pointwise BCE loss."""
    from transformers import TrainingArguments

    return TrainingArguments(
        **trainer_arguments(compute, out_dir, seed, learning_rate=cfg.learning_rate, epochs=cfg.epochs,
                            global_batch=cfg.batch_size, accumulation_steps=cfg.gradient_accumulation_steps),
        remove_unused_columns=False,
    )


def centered_reward_trainer_class():
    """`RewardTrainer` with the reference's centring term coef · mean(r²) (built lazily: imports TRL)."""
    from trl import RewardTrainer

    class CenteredRewardTrainer(RewardTrainer):
        def __init__(self, *args: Any, center_coefficient: float, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.center_coefficient = center_coefficient

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss, outputs = super().compute_loss(model, inputs, return_outputs=True,
                                                 num_items_in_batch=num_items_in_batch)
            rewards = outputs.logits.squeeze(-1)
            loss = loss + self.center_coefficient * rewards.pow(2).mean()
            return (loss, outputs) if return_outputs else loss

    return CenteredRewardTrainer


def pointwise_trainer_class():
    """A transformers `Trainer` whose loss is BCE-with-logits of the one logit on the label."""
    import torch.nn.functional as functional
    from transformers import Trainer

    class PointwiseTrainer(Trainer):
        loss_is_scaled_for_ga = False  # a per-batch mean: let the Trainer divide by accumulation steps

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            labels = inputs.pop("labels")
            outputs = model(**inputs)
            logits = outputs.logits.squeeze(-1)
            loss = functional.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
            return (loss, outputs) if return_outputs else loss

    return PointwiseTrainer


def pad_batch(sequences: Sequence[Sequence[int]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-padded input_ids and attention_mask for a list of token-id lists."""
    import torch

    width = max(len(ids) for ids in sequences)
    input_ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, ids in enumerate(sequences):
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def labelled_collator(pad_token_id: int):
    """Collate {input_ids, labels} features for the BCE trainer."""
    import torch

    def collate(features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = pad_batch([f["input_ids"] for f in features], pad_token_id)
        batch["labels"] = torch.tensor([float(f["labels"]) for f in features], dtype=torch.float32)
        return batch

    return collate


def load_sequence_classifier(base_model: str, pad_token_id: int, seed: int) -> PreTrainedModel:
    """A fresh one-logit head on the base model (fp32: mixed precision is the trainer's job)."""
    import torch
    from transformers import AutoModelForSequenceClassification, set_seed

    from mucode.models import resolve_model

    set_seed(seed)  # the new head's initialisation
    model = AutoModelForSequenceClassification.from_pretrained(resolve_model(base_model), num_labels=1,
                                                               dtype=torch.float32)
    # The head reads the last non-pad token, so the model must know the pad id.
    model.config.pad_token_id = pad_token_id
    return model


# ---------------------------------------------------------------- training

def train_verifier(cfg: VerifierConfig, base_model: str, aggregated: pl.DataFrame, problems: pl.DataFrame,
                   out_dir: str, seed: int = 0, *, compute: ComputeConfig | None = None) -> dict[str, Any]:
    """Train a verifier on the aggregate and save it to `out_dir`; return its metrics.

    In this process on CPU; under `accelerate launch` when `compute.num_gpus` > 0.
    """
    from mucode.models import resolve_model

    compute = compute or ComputeConfig()
    base = resolve_model(base_model)
    training_data(cfg, aggregated, problems, seed)  # fail here, before any process is launched
    per_device_batch_size(cfg.batch_size, compute, cfg.gradient_accumulation_steps)
    options = launch_options("verifier", cfg, compute, base, out_dir, seed)
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


def fit_verifier(cfg: VerifierConfig, compute: ComputeConfig, base_model: str, aggregated: pl.DataFrame,
                 problems: pl.DataFrame, out_dir: str, seed: int) -> dict[str, Any]:
    """Train in this process (what each accelerate rank runs), save, then score the held-out problems."""
    from datasets import Dataset

    from mucode.models import load_tokenizer

    train_samples, pairs, heldout = training_data(cfg, aggregated, problems, seed)
    tokenizer = load_tokenizer(base_model, padding_side="right")

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
    result = trainer.train()
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


# ---------------------------------------------------------------- scoring

def score_token_ids(model: PreTrainedModel, sequences: Sequence[Sequence[int]], batch_size: int,
                    pad_token_id: int) -> list[float]:
    """The logit of every sequence, in input order; batches of similar length for speed."""
    import torch

    longest_first = sorted(range(len(sequences)), key=lambda i: -len(sequences[i]))
    scores = [0.0] * len(sequences)
    device = next(model.parameters()).device
    with torch.inference_mode():
        for start in range(0, len(longest_first), batch_size):
            chunk = longest_first[start : start + batch_size]
            batch = {k: v.to(device) for k, v in pad_batch([sequences[i] for i in chunk], pad_token_id).items()}
            logits = model(**batch).logits[:, 0].float().cpu().tolist()
            for index, logit in zip(chunk, logits):
                scores[index] = logit
    return scores


class VerifierScorer:
    """Scores (first user message, answer) pairs with a trained verifier directory."""

    def __init__(self, path: str, batch_size: int = 16, max_length: int = 2048, device: str | None = None) -> None:
        from transformers import AutoModelForSequenceClassification

        from mucode.models import default_device, load_tokenizer, resolve_model, torch_dtype

        target = device or default_device()
        self.tokenizer = load_tokenizer(path, padding_side="right")
        self.model = AutoModelForSequenceClassification.from_pretrained(
            resolve_model(path), dtype=torch_dtype("auto", target)).to(target).eval()
        if self.model.config.num_labels != 1 or self.model.config.pad_token_id is None:
            raise VerifierInputError(f"{path} is not a verifier (one logit, pad id set): pass a train_verifier output")
        self.batch_size = batch_size
        self.max_length = max_length

    def score(self, prompts: Sequence[str], answers: Sequence[str]) -> list[float]:
        if len(prompts) != len(answers):
            raise VerifierInputError(f"score got {len(prompts)} prompts but {len(answers)} answers: pass one each")
        sequences = [verifier_input_ids(self.tokenizer, p, a, self.max_length) for p, a in zip(prompts, answers)]
        return score_token_ids(self.model, sequences, self.batch_size, self.model.config.pad_token_id)


def score_final_answers(scorer: VerifierScorer, aggregated: pl.DataFrame, problems: pl.DataFrame) -> pl.DataFrame:
    """The scores frame relabelling needs: task_id, response, verifier_score of each distinct final answer."""
    require_columns(aggregated, AGGREGATE_COLUMNS, VerifierInputError, "the aggregate", "pass the output of the aggregate stage")
    finals = aggregated.filter(pl.col("final")).select("task_id", "response").unique(keep="first", maintain_order=True)
    prompted = with_prompts(finals, problems)
    scores = scorer.score(prompted["prompt"].to_list(), prompted["response"].to_list())
    return finals.with_columns(pl.Series("verifier_score", scores, dtype=pl.Float64))


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


if __name__ == "__main__":
    main(sys.argv[1:])


def verifier_stage(cfg, root: str, aggregated, problems):
    """Store-level stage: train a fresh verifier from the base model on the aggregate."""
    from mucode.artifacts import ArtifactStore

    store = ArtifactStore(root)
    with store.scratch_dir("verifier") as out_dir:
        metrics = train_verifier(cfg.verifier, cfg.model.name, store.get_frame(aggregated), store.get_frame(problems),
                                 out_dir, seed=cfg.seed, compute=cfg.compute)
        return store.put_dir(out_dir, stage="verifier", config_hash=cfg.section_digest("model", "verifier", "compute", "seed"),
                             inputs=[aggregated.hash, problems.hash], extra={"metrics": metrics})


# The Prefect task: cached on the config sections read and the input artifacts' hashes.
verifier_task = stage_task(verifier_stage, name="verifier", sections=("model", "verifier", "compute", "seed"), gpu=True)
