"""The verifier: samples, split, pairs, AUC, the centred BT loss, and (slow) real training on SmolLM2.

The slow tests train the bundled SmolLM2-135M on hand-made problems whose passing answers
are correct code and whose failing answers are clearly not code that solves anything.
"""

import json
import math
import random

import polars as pl
import pytest

from mucode.config import BUNDLED_MODEL, ComputeConfig, VerifierConfig
from mucode.prompts import first_user_message
from mucode.training import trainer_arguments
from mucode.tasks.verifier import train_verifier, training_data
from mucode.verifier_data import (VerifierInputError, preference_pairs, split_problems, verifier_input_ids,
                                  verifier_samples, verifier_text)
from mucode.verifier_scorer import VerifierScorer, average_ranks, pairwise_accuracy, roc_auc, score_final_answers
from mucode.verifier_trainers import centered_reward_trainer_class

PROBLEMS = {
    "add": ("Write a function add(a, b) that returns the sum of a and b.", "assert add(1, 2) == 3",
            ["def add(a, b):\n    return a + b", "def add(a, b):\n    total = a + b\n    return total"]),
    "square": ("Write a function square(x) that returns x squared.", "assert square(3) == 9",
               ["def square(x):\n    return x * x", "def square(x):\n    return x ** 2"]),
    "is_even": ("Write a function is_even(n) that returns True when n is even.", "assert is_even(4)",
                ["def is_even(n):\n    return n % 2 == 0", "def is_even(n):\n    return not n % 2"]),
    "first": ("Write a function first(xs) that returns the first item of a list.", "assert first([5, 6]) == 5",
              ["def first(xs):\n    return xs[0]", "def first(xs):\n    for x in xs:\n        return x"]),
}
WRONG = ["I am not sure how to solve this.", "```python\nraise NotImplementedError\n```"]


def problems_frame():
    return pl.DataFrame([{"task_id": t, "dataset": "mbpp", "prompt": p, "public_tests": tests, "private_tests": tests}
                         for t, (p, tests, _) in PROBLEMS.items()])


def aggregated_frame():
    """Per problem: two rollouts ending in a correct answer, two ending in a wrong one.

    Each correct rollout opens with a wrong first turn (label 0 although it is not final).
    """
    rows = []
    for task_id, (_, _, good) in PROBLEMS.items():
        for rollout_id, code in enumerate(good):
            rows.append(dict(task_id=task_id, rollout_id=rollout_id, turn=1, response=WRONG[rollout_id],
                             final=False, oracle_passed=False))
            rows.append(dict(task_id=task_id, rollout_id=rollout_id, turn=2, response=f"```python\n{code}\n```",
                             final=True, oracle_passed=True))
        for offset, wrong in enumerate(WRONG):
            rows.append(dict(task_id=task_id, rollout_id=2 + offset, turn=1, response=wrong, final=True,
                             oracle_passed=False))
    frame = pl.DataFrame(rows)
    return frame.with_columns(pl.lit("[]").alias("prompt_messages"), pl.lit(0, dtype=pl.Int64).alias("iteration"))


@pytest.fixture(scope="module")
def tokenizer():
    from mucode.models import load_tokenizer

    return load_tokenizer(BUNDLED_MODEL, padding_side="right")


# ---------------------------------------------------------------- data

def test_samples_are_every_turn_labelled_by_final_oracle_outcome():
    aggregated = aggregated_frame()
    # A non-final turn whose code passes (a flaky label) still counts as 0.
    aggregated = aggregated.with_columns(
        pl.when((pl.col("turn") == 1) & (pl.col("rollout_id") == 0)).then(True)
        .otherwise(pl.col("oracle_passed")).alias("oracle_passed"))
    samples = verifier_samples(aggregated, problems_frame())
    assert samples.height == aggregated.height
    assert samples["label"].to_list() == [final and passed for final, passed in
                                          zip(aggregated["final"], aggregated["oracle_passed"])]
    assert samples["label"].sum() == 8 and not samples.filter(pl.col("answer").is_in(WRONG))["label"].any()
    prompt, tests, _ = PROBLEMS["add"]
    assert set(samples.filter(pl.col("task_id") == "add")["prompt"]) == {first_user_message(prompt, tests, "mbpp")}


def test_samples_of_stdin_stdout_problems_carry_the_stdio_prompt():
    # The verifier must read CodeContests problems as the generator saw them in training.
    problems = problems_frame().with_columns(pl.lit("codecontests").alias("dataset"))
    samples = verifier_samples(aggregated_frame(), problems)
    prompt, tests, _ = PROBLEMS["add"]
    assert set(samples.filter(pl.col("task_id") == "add")["prompt"]) == {first_user_message(prompt, tests,
                                                                                            "codecontests")}
    assert samples["prompt"].str.contains("reads from standard input").all()
    with pytest.raises(VerifierInputError, match=r"problems frame lacks columns \['dataset'\]"):
        verifier_samples(aggregated_frame(), problems_frame().drop("dataset"))


def test_samples_reject_bad_inputs():
    with pytest.raises(VerifierInputError, match="not in the problems frame"):
        verifier_samples(aggregated_frame(), problems_frame().filter(pl.col("task_id") != "add"))
    with pytest.raises(VerifierInputError, match=r"lacks columns \['final'\]"):
        verifier_samples(aggregated_frame().drop("final"), problems_frame())
    with pytest.raises(VerifierInputError, match=r"problems frame lacks columns \['public_tests'\]"):
        verifier_samples(aggregated_frame(), problems_frame().drop("public_tests"))
    with pytest.raises(VerifierInputError, match="aggregate is empty"):
        verifier_samples(aggregated_frame().head(0), problems_frame())


def test_split_is_by_problem_seeded_and_keeps_one_training_problem():
    ids = [f"t{i}" for i in range(20)] * 3
    train, heldout = split_problems(ids, 0.25, seed=3)
    assert len(heldout) == 5 and len(train) == 15
    assert sorted(train + heldout) == sorted(set(ids))
    assert split_problems(ids, 0.25, seed=3) == (train, heldout)
    assert any(split_problems(ids, 0.25, seed=s)[1] != heldout for s in range(4, 10))
    assert split_problems(ids, 0.0, seed=3) == (sorted(set(ids)), [])
    assert split_problems(["a", "b"], 0.9, seed=0)[0] != []  # never everything held out


def test_pairs_are_all_pairs_when_few_and_a_seeded_sample_when_many():
    samples = verifier_samples(aggregated_frame(), problems_frame())
    all_pairs = preference_pairs(samples, pairs_per_problem=4, seed=0)
    good = {f"```python\n{code}\n```" for _, _, codes in PROBLEMS.values() for code in codes}
    assert all_pairs.height == 16  # 2 passing × 2 failing distinct answers, 4 problems
    assert set(all_pairs["chosen"]) <= good and set(all_pairs["rejected"]) == set(WRONG)
    assert all_pairs.unique().height == 16
    few = preference_pairs(samples, pairs_per_problem=3, seed=5)
    assert few.height == 12 and few.unique().height == 12
    assert set(few.rows()) <= set(all_pairs.rows())
    assert preference_pairs(samples, 3, seed=5).rows() == few.rows()
    assert any(preference_pairs(samples, 3, seed=s).rows() != few.rows() for s in range(6, 12))


def test_problems_without_both_kinds_give_no_pairs():
    samples = verifier_samples(aggregated_frame(), problems_frame())
    only_wrong = samples.filter(~pl.col("label"))
    assert preference_pairs(only_wrong, 8, seed=0).height == 0
    # An answer that both passed and failed somewhere is never a rejected one.
    mixed = pl.concat([samples, samples.filter(pl.col("label")).with_columns(pl.lit(False).alias("label"))])
    assert set(preference_pairs(mixed, 8, seed=0)["rejected"]) == set(WRONG)


def test_bt_without_pairs_is_one_clear_error_but_bce_trains():
    aggregated = aggregated_frame().with_columns(pl.lit(False).alias("oracle_passed"))
    with pytest.raises(VerifierInputError, match="no \\(passing, failing\\) answer pairs.*verifier.loss=bce"):
        training_data(VerifierConfig(loss="bt"), aggregated, problems_frame(), seed=0)
    train, pairs, heldout = training_data(VerifierConfig(loss="bce", heldout_fraction=0.25), aggregated,
                                          problems_frame(), seed=0)
    assert pairs.height == 0 and train["task_id"].n_unique() == 3 and heldout["task_id"].n_unique() == 1


# ---------------------------------------------------------------- metrics

def brute_force_auc(scores, labels):
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def test_average_ranks_share_ties():
    assert average_ranks([3.0, 1.0, 3.0, 2.0]) == [3.5, 1.0, 3.5, 2.0]


def test_auc_matches_the_pairwise_definition_with_ties():
    rng = random.Random(0)
    for _ in range(20):
        scores = [rng.choice([0.0, 0.5, 1.0, 1.5, 2.0]) for _ in range(30)]
        labels = [rng.random() < 0.4 for _ in range(30)]
        if 0 < sum(labels) < 30:
            assert roc_auc(scores, labels) == pytest.approx(brute_force_auc(scores, labels))
    assert roc_auc([0.1, 0.9], [False, True]) == 1.0
    assert roc_auc([0.9, 0.1], [False, True]) == 0.0


def test_auc_of_one_class_is_nan():
    assert math.isnan(roc_auc([0.1, 0.2], [True, True]))
    assert math.isnan(roc_auc([], []))


def test_pairwise_accuracy_counts_strict_wins():
    assert pairwise_accuracy([1.0, 2.0, 3.0], [0.0, 2.0, 4.0]) == pytest.approx(1 / 3)
    assert math.isnan(pairwise_accuracy([], []))


# ---------------------------------------------------------------- input text

def test_verifier_text_is_the_chat_template_over_problem_and_answer(tokenizer):
    prompt, answer = "Solve it.", "```python\nx = 1\n```"
    text = verifier_text(tokenizer, prompt, answer)
    assert text == tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}], tokenize=False)
    assert text.index(prompt) < text.index(answer)
    ids = verifier_input_ids(tokenizer, prompt, answer, max_length=512)
    assert ids == tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text  # no special token added twice
    assert verifier_input_ids(tokenizer, prompt, answer, max_length=16) == ids[:16]


def test_training_arguments_on_cpu_and_on_gpus():
    cpu = trainer_arguments(ComputeConfig(), "out", 1, learning_rate=1e-6, epochs=2.0, global_batch=64)
    assert (cpu["use_cpu"], cpu["bf16"], cpu["activation_checkpointing"]) == (True, False, False)
    assert cpu["per_device_train_batch_size"] == 64 and cpu["lr_scheduler_type"] == "linear"
    gpus = ComputeConfig(num_gpus=4, distributed="deepspeed-zero3", bf16=True, gradient_checkpointing=True)
    gpu = trainer_arguments(gpus, "out", 1, learning_rate=1e-6, epochs=2.0, global_batch=64)
    assert (gpu["use_cpu"], gpu["bf16"], gpu["activation_checkpointing"]) == (False, True, True)
    assert gpu["per_device_train_batch_size"] == 16


# ---------------------------------------------------------------- the centring term

def tiny_classifier(tokenizer):
    """A 1-layer random Llama classifier: enough to check the loss arithmetic quickly."""
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, num_labels=1,
                         pad_token_id=tokenizer.pad_token_id)
    return LlamaForSequenceClassification(config)


def test_bt_loss_adds_coefficient_times_mean_squared_reward(tokenizer, tmp_path):
    import torch
    from datasets import Dataset
    from trl import RewardConfig

    model = tiny_classifier(tokenizer)
    dataset = Dataset.from_dict({"chosen_ids": [[5, 6, 7], [8, 9]], "rejected_ids": [[10, 11], [12, 13, 14]]})
    args = RewardConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none",
                        activation_checkpointing=False, center_rewards_coefficient=None)
    losses = {}
    for coefficient in (0.0, 0.5):
        trainer = centered_reward_trainer_class()(model=model, args=args, train_dataset=dataset,
                                                  processing_class=tokenizer, center_coefficient=coefficient)
        batch = trainer.data_collator([dataset[0], dataset[1]])
        loss, outputs = trainer.compute_loss(model, dict(batch), return_outputs=True)
        losses[coefficient] = (loss.item(), outputs.logits.squeeze(-1).detach())
    rewards = losses[0.5][1]
    chosen, rejected = rewards[:2], rewards[2:]
    bradley_terry = -torch.nn.functional.logsigmoid(chosen - rejected).mean().item()
    assert losses[0.0][0] == pytest.approx(bradley_terry, rel=1e-5)
    assert losses[0.5][0] == pytest.approx(bradley_terry + 0.5 * rewards.pow(2).mean().item(), rel=1e-5)


# ---------------------------------------------------------------- real training (slow)

SMALL = ["add", "square", "is_even"]  # each real training step costs ~10-25 s on 2 shared cores


def small(frame):
    return frame.filter(pl.col("task_id").is_in(SMALL))


def tiny_config(loss, **update):
    # Far above the paper's lr so that two steps of SmolLM2-135M learn these few examples.
    return VerifierConfig(loss=loss, pairs_per_problem=1, learning_rate=1e-4, epochs=2, batch_size=2,
                          max_length=256, heldout_fraction=1 / 3).model_copy(update=update)


@pytest.fixture(scope="module")
def bt_verifier(tmp_path_factory):
    out = tmp_path_factory.mktemp("verifier-bt")
    metrics = train_verifier(tiny_config("bt"), BUNDLED_MODEL, small(aggregated_frame()), small(problems_frame()),
                             str(out), seed=0)
    return str(out), metrics


@pytest.mark.slow
def test_bt_verifier_learns_to_rank_passing_above_failing(bt_verifier):
    out, metrics = bt_verifier
    losses = [entry["loss"] for entry in metrics["loss_log"]]
    assert len(losses) == 2 and losses[-1] < losses[0]
    assert metrics["train_problems"] == 2 and metrics["train_pairs"] == 2
    train, pairs, heldout = training_data(tiny_config("bt"), small(aggregated_frame()), small(problems_frame()),
                                          seed=0)
    scorer = VerifierScorer(out, max_length=256)
    chosen = scorer.score(pairs["prompt"].to_list(), pairs["chosen"].to_list())
    rejected = scorer.score(pairs["prompt"].to_list(), pairs["rejected"].to_list())
    assert all(c > r for c, r in zip(chosen, rejected))
    # Beyond its own pairs: every passing training answer above every failing one.
    scores = scorer.score(train["prompt"].to_list(), train["answer"].to_list())
    assert roc_auc(scores, train["label"].to_list()) == 1.0
    assert metrics["heldout_samples"] == 4 and metrics["heldout_pairs"] == 1
    # The held-out metrics, recomputed here from the held-out samples by the pairwise definition.
    heldout_scores = scorer.score(heldout["prompt"].to_list(), heldout["answer"].to_list())
    assert metrics["heldout_auc"] == pytest.approx(brute_force_auc(heldout_scores, heldout["label"].to_list()))
    score_of = dict(zip(zip(heldout["task_id"], heldout["answer"]), heldout_scores))
    (task, chosen, rejected), = preference_pairs(heldout, 1, seed=0).select("task_id", "chosen", "rejected").rows()
    assert metrics["heldout_pair_accuracy"] == float(score_of[(task, chosen)] > score_of[(task, rejected)])
    print("bt verifier metrics:", json.dumps({k: v for k, v in metrics.items() if k != "loss_log"}),
          "losses:", [round(v, 4) for v in losses])


@pytest.mark.slow
def test_saved_verifier_is_a_plain_one_logit_model(bt_verifier):
    from pathlib import Path

    from transformers import AutoConfig

    out, _ = bt_verifier
    config = AutoConfig.from_pretrained(out)
    assert config.num_labels == 1 and config.pad_token_id is not None
    assert (Path(out) / "model.safetensors").is_file() and (Path(out) / "tokenizer.json").is_file()
    assert not (Path(out) / "training_args.bin").exists()


@pytest.mark.slow
def test_scorer_batches_by_length_and_returns_input_order(bt_verifier):
    out, _ = bt_verifier
    samples = verifier_samples(small(aggregated_frame()), small(problems_frame())).unique(
        subset=["task_id", "answer"], maintain_order=True).head(6)
    prompts, answers = samples["prompt"].to_list(), samples["answer"].to_list()
    scorer = VerifierScorer(out, batch_size=4, max_length=256)
    batched = scorer.score(prompts, answers)
    scorer.batch_size = 1
    one_by_one = scorer.score(prompts, answers)
    assert batched == pytest.approx(one_by_one, abs=1e-4)
    assert len(set(round(s, 3) for s in batched)) > 2  # not a constant
    with pytest.raises(VerifierInputError, match="2 prompts but 1 answers"):
        scorer.score(["a", "b"], ["c"])


@pytest.mark.slow
def test_final_answer_scores_cover_each_distinct_final_answer(bt_verifier):
    out, _ = bt_verifier
    scorer = VerifierScorer(out, max_length=256)
    aggregated = aggregated_frame().filter(pl.col("task_id") == "add")
    scores = score_final_answers(scorer, aggregated, problems_frame())
    finals = aggregated.filter(pl.col("final")).select("task_id", "response").unique()
    assert scores.height == finals.height == 4
    assert set(scores.select("task_id", "response").rows()) == set(finals.rows())
    prompt, tests, _ = PROBLEMS["add"]
    direct = scorer.score([first_user_message(prompt, tests, "mbpp")] * 4, scores["response"].to_list())
    assert scores["verifier_score"].to_list() == pytest.approx(direct, abs=1e-4)


@pytest.mark.slow
def test_bce_verifier_learns_labels(tmp_path):
    aggregated = aggregated_frame().filter(pl.col("task_id") == "add")
    cfg = tiny_config("bce", batch_size=4, heldout_fraction=0.0, learning_rate=2e-5)
    metrics = train_verifier(cfg, BUNDLED_MODEL, aggregated, problems_frame(), str(tmp_path), seed=0)
    losses = [entry["loss"] for entry in metrics["loss_log"]]
    assert metrics["train_samples"] == 4 and len(losses) == 2 and losses[-1] < losses[0]
    assert math.isnan(metrics["heldout_auc"]) and metrics["heldout_note"].endswith("no held-out problems")
    train, _, _ = training_data(cfg, aggregated, problems_frame(), seed=0)
    scores = VerifierScorer(str(tmp_path), max_length=256).score(train["prompt"].to_list(),
                                                                  train["answer"].to_list())
    assert roc_auc(scores, train["label"].to_list()) == 1.0
    print("bce verifier losses:", [round(v, 4) for v in losses])


@pytest.mark.slow
def test_lora_verifier_trains_its_score_head_and_saves_a_merged_plain_model(tmp_path):
    import torch
    from transformers import AutoModelForSequenceClassification

    from mucode.models import load_tokenizer
    from mucode.verifier_trainers import load_sequence_classifier
    from mucode.training import trainable_model

    cfg = tiny_config("bce", batch_size=4, heldout_fraction=0.0, learning_rate=1e-3, method="lora")
    pad_id = load_tokenizer(BUNDLED_MODEL).pad_token_id
    wrapped = trainable_model(load_sequence_classifier(BUNDLED_MODEL, pad_id, seed=0), cfg.method, cfg.lora, None,
                              "SEQ_CLS")
    trainable = [name for name, weight in wrapped.named_parameters() if weight.requires_grad]
    assert any(".score." in name for name in trainable) and any("lora_" in name for name in trainable)
    assert not any("q_proj.base_layer" in name for name in trainable)
    del wrapped

    aggregated = aggregated_frame().filter(pl.col("task_id") == "add")
    metrics = train_verifier(cfg, BUNDLED_MODEL, aggregated, problems_frame(), str(tmp_path), seed=0)
    losses = [entry["loss"] for entry in metrics["loss_log"]]
    assert metrics["method"] == "lora" and losses[-1] < losses[0]
    assert [p.name for p in tmp_path.iterdir() if "adapter" in p.name] == []
    trained = AutoModelForSequenceClassification.from_pretrained(str(tmp_path), dtype=torch.float32)
    base = load_sequence_classifier(BUNDLED_MODEL, pad_id, seed=0)  # the same seeded fresh head
    assert [n for n, _ in trained.named_parameters()] == [n for n, _ in base.named_parameters()]
    base_weights = dict(base.named_parameters())
    changed = {n for n, w in trained.named_parameters() if not torch.equal(w, base_weights[n])}
    assert "score.weight" in changed and any(n.endswith("q_proj.weight") for n in changed)
    train, _, _ = training_data(cfg, aggregated, problems_frame(), seed=0)
    scores = VerifierScorer(str(tmp_path), max_length=256).score(train["prompt"].to_list(), train["answer"].to_list())
    assert len(set(scores)) > 1
    print("lora verifier losses:", [round(v, 4) for v in losses])
