"""Scoring with a trained verifier, and how well its scores rank held-out answers.

`VerifierScorer` loads a verifier directory (a one-logit sequence classifier) and scores
(first user message, answer) pairs, in batches of similar length. `score_final_answers` is
the scores frame relabelling reads; `heldout_metrics` the pairwise accuracy and rank AUC of
a verifier on held-out problems. This module does not train (`tasks.verifier`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import polars as pl

from mucode.columns import require_columns
from mucode.verifier_data import (AGGREGATE_COLUMNS, VerifierInputError, preference_pairs, verifier_input_ids,
                                  with_prompts)

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

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

        from mucode.models import default_device, resolve, torch_dtype

        target = device or default_device()
        verifier = resolve(path)
        self.tokenizer = verifier.load_tokenizer(padding_side="right")
        self.model = AutoModelForSequenceClassification.from_pretrained(
            verifier.path, dtype=torch_dtype("auto", target)).to(target).eval()
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
