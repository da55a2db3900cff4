"""The trainers a verifier learns with, and the fresh one-logit model they start from.

Two losses (`VerifierConfig.loss`): `bt`, Bradley–Terry on (passing, failing) pairs through
TRL's `RewardTrainer`, plus `center_coefficient` · mean(r²) over the batch's rewards (TRL's
own centring term is mean((r_chosen + r_rejected)²), a different quantity, so ours is added
by a subclass); `bce`, pointwise binary cross-entropy of the logit on the label. TRL and
transformers are imported only when a trainer is built. This module does not pick the data
(`mucode.verifier_data`) or run the training (`tasks.verifier`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mucode.config import ComputeConfig, VerifierConfig
from mucode.training import trainer_arguments
from mucode.verifier_scorer import pad_batch

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from mucode.models import ResolvedModel

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


def labelled_collator(pad_token_id: int):
    """Collate {input_ids, labels} features for the BCE trainer."""
    import torch

    def collate(features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = pad_batch([f["input_ids"] for f in features], pad_token_id)
        batch["labels"] = torch.tensor([float(f["labels"]) for f in features], dtype=torch.float32)
        return batch

    return collate


def load_sequence_classifier(base_model: str | ResolvedModel, pad_token_id: int, seed: int) -> PreTrainedModel:
    """A fresh one-logit head on the base model (fp32: mixed precision is the trainer's job)."""
    import torch
    from transformers import AutoModelForSequenceClassification, set_seed

    from mucode.models import resolve

    set_seed(seed)  # the new head's initialisation
    model = AutoModelForSequenceClassification.from_pretrained(resolve(base_model).path, num_labels=1,
                                                               dtype=torch.float32)
    # The head reads the last non-pad token, so the model must know the pad id.
    model.config.pad_token_id = pad_token_id
    return model
