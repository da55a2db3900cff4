"""Fine-tuning: the exact loss mask, the SFT config, and (slow) real SFT of SmolLM2 (full and LoRA).

The mask tests check, token by token, that the loss covers the answer and the `<|im_end|>`
that closes it, and nothing of the prompt (earlier answers and feedback included).
"""

import json

import polars as pl
import pytest

from mucode.config import BUNDLED_MODEL, ComputeConfig, FinetuneConfig
from mucode.environment import extend_conversation, initial_conversation
from mucode.tasks.finetune import (FinetuneInputError, build_sft_trainer, finetune, sft_config, sft_conversations,
                                   tokenize_sft, tokenize_sft_example)

TARGETS = {
    "add": "```python\ndef add(a, b):\n    return a + b\n```",
    "square": "```python\ndef square(x):\n    return x * x\n```",
}


def sft_frame():
    """Each problem's first-turn prompt and a two-turn prompt (after a failed answer), same target."""
    rows = []
    for name, target in TARGETS.items():
        first = initial_conversation(f"Write a function {name}.", f"assert {name}(2, 2) == 4", "mbpp")
        second = extend_conversation(first, "def x():\n    pass", False, f"NameError: name '{name}' is not defined")
        rows += [{"task_id": name, "prompt_messages": json.dumps(first), "completion": target},
                 {"task_id": name, "prompt_messages": json.dumps(second), "completion": target}]
    return pl.DataFrame(rows)


@pytest.fixture(scope="module")
def tokenizer():
    from mucode.models import load_tokenizer

    return load_tokenizer(BUNDLED_MODEL, padding_side="right")


def test_rows_become_prompt_completion_conversations():
    conversations = sft_conversations(sft_frame())
    assert conversations[1]["prompt"] == json.loads(sft_frame()["prompt_messages"][1])
    assert [m["role"] for m in conversations[1]["prompt"]] == ["user", "assistant", "user"]
    assert conversations[1]["completion"] == [{"role": "assistant", "content": TARGETS["add"]}]


@pytest.mark.parametrize("row", [0, 1])
def test_mask_is_exactly_the_answer_and_its_end_of_turn_token(tokenizer, row):
    conversation = sft_conversations(sft_frame())[row]
    example = tokenize_sft_example(tokenizer, conversation["prompt"], conversation["completion"], max_length=1024)
    ids, mask = example["input_ids"], example["completion_mask"]
    prompt_ids = tokenizer.apply_chat_template(conversation["prompt"], add_generation_prompt=True, tokenize=True,
                                               return_dict=True)["input_ids"]
    answer_ids = tokenizer(TARGETS["add"], add_special_tokens=False)["input_ids"]
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert ids == prompt_ids + answer_ids + [im_end]
    assert mask == [0] * len(prompt_ids) + [1] * (len(answer_ids) + 1)
    trained = [token for token, bit in zip(ids, mask) if bit]
    assert tokenizer.decode(trained) == TARGETS["add"] + "<|im_end|>"
    assert tokenizer.decode([t for t, bit in zip(ids, mask) if not bit]).endswith("<|im_start|>assistant\n")


def test_earlier_answers_in_the_prompt_are_not_trained(tokenizer):
    conversation = sft_conversations(sft_frame())[1]
    example = tokenize_sft_example(tokenizer, conversation["prompt"], conversation["completion"], max_length=1024)
    prompt_part = tokenizer.decode([t for t, bit in zip(example["input_ids"], example["completion_mask"]) if not bit])
    assert "def x():\n    pass" in prompt_part and "Feedback: NameError" in prompt_part
    assert prompt_part.count("<|im_end|>") == 4  # system, user, assistant, feedback: all closed in the prompt


def test_long_examples_are_cut_or_dropped_and_counted(tokenizer):
    conversation = sft_conversations(sft_frame())[0]
    full = tokenize_sft_example(tokenizer, conversation["prompt"], conversation["completion"], max_length=1024)
    prompt_length = full["completion_mask"].index(1)
    cut = tokenize_sft_example(tokenizer, conversation["prompt"], conversation["completion"],
                               max_length=prompt_length + 3)
    assert cut["input_ids"] == full["input_ids"][: prompt_length + 3] and sum(cut["completion_mask"]) == 3
    assert tokenize_sft_example(tokenizer, conversation["prompt"], conversation["completion"],
                                max_length=prompt_length) is None
    longest_prompt = max(tokenize_sft_example(tokenizer, c["prompt"], c["completion"], 1024)["completion_mask"]
                         .index(1) for c in sft_conversations(sft_frame()))
    examples, counts = tokenize_sft(tokenizer, sft_frame(), max_length=prompt_length + 3)
    assert counts == {"examples": 2, "dropped_long_prompt": 2, "truncated_completion": 2}
    assert len(examples) == 2 and longest_prompt > prompt_length + 3
    with pytest.raises(FinetuneInputError, match="all 4 SFT examples have prompts of 20\\+ tokens"):
        tokenize_sft(tokenizer, sft_frame(), max_length=20)


def test_bad_sft_frames_give_one_line():
    with pytest.raises(FinetuneInputError, match="SFT frame is empty"):
        finetune(FinetuneConfig(), ComputeConfig(), BUNDLED_MODEL, sft_frame().head(0), "unused")
    with pytest.raises(FinetuneInputError, match=r"lacks columns \['completion'\]"):
        finetune(FinetuneConfig(), ComputeConfig(), BUNDLED_MODEL, sft_frame().drop("completion"), "unused")


def test_sft_config_trains_on_the_completion_only_in_fp32_on_cpu(tmp_path):
    cfg = FinetuneConfig(learning_rate=5e-7, epochs=2, batch_size=16, gradient_accumulation_steps=2,
                         max_length=8192)
    args = sft_config(cfg, ComputeConfig(), str(tmp_path), seed=3)
    assert args.completion_only_loss is True and args.assistant_only_loss is False and args.packing is False
    assert (args.max_length, args.learning_rate, args.num_train_epochs) == (8192, 5e-7, 2)
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == (8, 2)
    assert args.bf16 is False and args.use_cpu is True and args.activation_checkpointing is False
    assert args.lr_scheduler_type == "linear" and args.seed == 3


# ---------------------------------------------------------------- real training (slow)

def mean_completion_logprob(model_dir, tokenizer, examples):
    """The mean log-probability per trained token of the examples' completions under a model."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    total, count = 0.0, 0
    with torch.inference_mode():
        for example in examples:
            ids = torch.tensor([example["input_ids"]])
            logprobs = torch.log_softmax(model(input_ids=ids).logits[0, :-1], dim=-1)
            picked = logprobs.gather(1, ids[0, 1:, None])[:, 0]
            trained = torch.tensor(example["completion_mask"][1:], dtype=torch.bool)
            total += picked[trained].sum().item()
            count += int(trained.sum())
    return total / count


def tiny_sft_config(**update):
    # lr far above the paper's so that two steps move SmolLM2-135M visibly.
    return FinetuneConfig(learning_rate=1e-4, epochs=2, batch_size=2, max_length=256).model_copy(update=update)


def training_rows():
    """Two examples (a first-turn and a second-turn prompt): each step costs ~10-40 s on 2 shared cores."""
    return sft_frame()[[0, 3]]


@pytest.fixture(scope="module")
def base_logprob(tokenizer):
    from mucode.models import resolve_model

    examples, _ = tokenize_sft(tokenizer, training_rows(), max_length=256)
    return examples, mean_completion_logprob(resolve_model(BUNDLED_MODEL), tokenizer, examples)


@pytest.mark.slow
def test_full_finetune_raises_the_likelihood_of_its_targets(tokenizer, base_logprob, tmp_path):
    examples, before = base_logprob
    metrics = finetune(tiny_sft_config(), ComputeConfig(), BUNDLED_MODEL, training_rows(), str(tmp_path), seed=0)
    after = mean_completion_logprob(str(tmp_path), tokenizer, examples)
    assert after > before
    losses = [entry["loss"] for entry in metrics["loss_log"]]
    assert len(losses) == 2 and losses[-1] < losses[0]
    assert metrics["examples"] == 2 and metrics["completion_tokens"] == sum(sum(e["completion_mask"]) for e in examples)
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "tokenizer.json").is_file()
    assert not (tmp_path / "training_args.bin").exists()
    assert json.loads((tmp_path / "config.json").read_text())["use_cache"] is True
    print(f"full SFT: mean completion log-prob {before:.4f} -> {after:.4f}; losses {losses}; "
          f"train {metrics['train_runtime_s']:.1f}s")


def assert_plain_model_that_differs_from_base(path):
    """The directory loads as an ordinary transformers model (no peft), with weights moved off the base's."""
    import torch
    from transformers import AutoModelForCausalLM

    from mucode.models import resolve_model

    trained = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(resolve_model(BUNDLED_MODEL), dtype=torch.float32)
    names = [name for name, _ in trained.named_parameters()]
    assert not any("lora" in name for name in names) and names == [name for name, _ in base.named_parameters()]
    base_weights = dict(base.named_parameters())
    changed = [name for name, weight in trained.named_parameters() if not torch.equal(weight, base_weights[name])]
    assert any(name.endswith("q_proj.weight") for name in changed)


@pytest.mark.slow
def test_lora_finetune_saves_a_merged_plain_model(tokenizer, base_logprob, tmp_path):
    examples, before = base_logprob
    metrics = finetune(tiny_sft_config(method="lora", learning_rate=1e-3), ComputeConfig(), BUNDLED_MODEL,
                       training_rows(), str(tmp_path), seed=0)
    assert metrics["method"] == "lora"
    assert [p.name for p in tmp_path.iterdir() if "adapter" in p.name] == []
    assert_plain_model_that_differs_from_base(str(tmp_path))
    after = mean_completion_logprob(str(tmp_path), tokenizer, examples)
    assert after > before
    print(f"LoRA SFT: mean completion log-prob {before:.4f} -> {after:.4f}; train {metrics['train_runtime_s']:.1f}s")


@pytest.mark.slow
def test_trl_builds_its_labels_from_our_mask(tokenizer, tmp_path):
    examples, _ = tokenize_sft(tokenizer, sft_frame(), max_length=256)
    trainer = build_sft_trainer(tiny_sft_config(), ComputeConfig(), BUNDLED_MODEL, examples, str(tmp_path), seed=0)
    for prepared, example in zip(trainer.train_dataset, examples):
        assert prepared["input_ids"] == example["input_ids"]
        assert prepared["labels"] == [t if bit else -100 for t, bit in zip(example["input_ids"],
                                                                           example["completion_mask"])]
    assert len(trainer.train_dataset) == len(examples)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["full", "lora"])
def test_top_layers_train_alone_and_the_rest_stays_out_of_backward(method):
    import torch

    from mucode.config import LoraSettings
    from mucode.tasks.finetune import load_causal_lm
    from mucode.training import TrainingLaunchError, trainable_model

    model = trainable_model(load_causal_lm(BUNDLED_MODEL), method, LoraSettings(), 2, "CAUSAL_LM")
    layers = model.config.num_hidden_layers
    trainable = [name for name, weight in model.named_parameters() if weight.requires_grad]
    top = {f"layers.{layers - 2}.", f"layers.{layers - 1}."}
    assert trainable and all(any(t in name for t in top) or "norm.weight" == name.rsplit("model.", 1)[-1]
                             for name in trainable)
    assert (method == "lora") == all("lora_" in name for name in trainable)
    input_ids = torch.tensor([[1, 2, 3, 4]])
    hidden = {}
    bottom = model.get_base_model() if method == "lora" else model
    handle = bottom.model.layers[0].register_forward_hook(lambda module, args, output: hidden.setdefault("h", output))
    model(input_ids=input_ids, labels=input_ids).loss.backward()
    handle.remove()
    first_layer_output = hidden["h"][0] if isinstance(hidden["h"], tuple) else hidden["h"]
    assert not first_layer_output.requires_grad  # autograd recorded nothing below the top layers
    with pytest.raises(TrainingLaunchError, match="train_top_layers=99"):
        trainable_model(load_causal_lm(BUNDLED_MODEL), method, LoraSettings(), 99, "CAUSAL_LM")
