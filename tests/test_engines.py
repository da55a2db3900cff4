"""Generation engines (mucode.engines): sampling plans, batching, the seeded sampler, the
hf engine on the bundled model, and the sglang engine's missing-SGLang error.

The sglang engine's client, server process handling, retries and timeouts are tested
against a real CPU server in tests/test_server_engine.py.
"""

from __future__ import annotations

import importlib.util
import os
from collections import Counter
from pathlib import Path

import pytest

from mucode.engines import (
    EngineClosedError,
    EngineUnavailableError,
    SamplingParams,
    UnknownEngineError,
    make_engine,
)
from mucode.engines.batching import cut_at_stop, group_by_prompt, left_pad, length_sorted_batches, shared_rows
from mucode.engines.cpu_threads import auto_num_threads, cpu_thread_budget
from mucode.engines.sampling import draws_per_prompt, plan_draws
from mucode.engines.sglang import SGLANG_MISSING

BUNDLED = "bundled:smollm2-135m-instruct"
CONVERSATIONS = [
    [{"role": "user", "content": "Write a Python function `add(a, b)` that returns the sum."}],
    [{"role": "user", "content": "What is 2+2? Answer with a number only."}],
    [
        {"role": "user", "content": "Write a function is_even(n)."},
        {"role": "assistant", "content": "```python\ndef is_even(n):\n    return n % 2\n```"},
        {"role": "user", "content": "Feedback: AssertionError: assert is_even(2) == True"},
    ],
]


# --- sampling parameters and draw plans ------------------------------------------------


def test_sampling_params_defaults_match_the_paper_and_are_frozen() -> None:
    sampling = SamplingParams()
    assert (sampling.temperature, sampling.top_p, sampling.max_new_tokens, sampling.seed) == (0.7, 1.0, 1000, 0)
    with pytest.raises(AttributeError):
        sampling.seed = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    "bad", [{"temperature": -0.1}, {"top_p": 0.0}, {"top_p": 1.5}, {"max_new_tokens": 0}, {"seed": -1}]
)
def test_sampling_params_reject_bad_values(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        SamplingParams(**bad)


def test_greedy_computes_one_draw_per_prompt() -> None:
    assert draws_per_prompt(5, SamplingParams(temperature=0)) == 1
    assert draws_per_prompt(5, SamplingParams(temperature=0.7)) == 5
    with pytest.raises(ValueError):
        draws_per_prompt(0, SamplingParams())


def test_draw_seeds_depend_on_prompt_and_index_not_on_the_rest_of_the_call() -> None:
    alone = plan_draws([[5, 6, 7]], 3, base_seed=1)
    among_others = plan_draws([[1, 2], [5, 6, 7], [9]], 3, base_seed=1)
    assert [draw.seed for draw in alone] == [draw.seed for draw in among_others if draw.prompt_index == 1]
    assert len({draw.seed for draw in among_others}) == 9
    assert [draw.seed for draw in plan_draws([[5, 6, 7]], 3, base_seed=2)] != [draw.seed for draw in alone]


def test_repeated_prompts_in_one_call_get_fresh_draws() -> None:
    draws = plan_draws([[4, 4], [4, 4]], 2, base_seed=0)
    assert [(draw.prompt_index, draw.sample_index) for draw in draws] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert len({draw.seed for draw in draws}) == 4
    # The second copy continues the first copy's stream: same as asking one prompt for 4.
    assert [draw.seed for draw in draws] == [draw.seed for draw in plan_draws([[4, 4]], 4, base_seed=0)]


def test_named_seed_streams_give_the_same_draws_in_any_call_and_never_repeat() -> None:
    # Four identical prompts (same conversation, four rollouts), one call or four calls.
    streams = [f"t/rollout-{r}/turn-2" for r in range(4)]
    together = [draw.seed for draw in plan_draws([[4, 4]] * 4, 2, base_seed=0, streams=streams)]
    apart = [draw.seed for r in range(4) for draw in plan_draws([[4, 4]], 2, base_seed=0, streams=streams[r:r + 1])]
    assert together == apart and len(set(together)) == 8
    assert together != [draw.seed for draw in plan_draws([[4, 4]] * 4, 2, base_seed=1, streams=streams)]
    with pytest.raises(ValueError, match="named twice"):
        plan_draws([[4, 4], [4, 4]], 1, base_seed=0, streams=["same", "same"])
    assert len(plan_draws([[4, 4], [5]], 1, base_seed=0, streams=["same", "same"])) == 2  # other prompts may share
    with pytest.raises(ValueError, match="2 seed streams for 1 prompts"):
        plan_draws([[4, 4]], 1, base_seed=0, streams=["a", "b"])


# --- batching helpers ------------------------------------------------------------------


def test_length_sorted_batches_cover_every_draw_once_longest_first() -> None:
    lengths = [3, 9, 1, 9, 4, 7, 2]
    batches = length_sorted_batches(lengths, batch_size=3)
    assert sorted(index for batch in batches for index in batch) == list(range(len(lengths)))
    assert all(len(batch) <= 3 for batch in batches)
    flattened = [lengths[index] for batch in batches for index in batch]
    assert flattened == sorted(lengths, reverse=True)
    assert batches[0][:2] == [1, 3]  # equal lengths keep call order


def test_left_pad_aligns_prompts_on_the_right() -> None:
    padded, mask = left_pad([[1, 2, 3], [4]], pad_id=0)
    assert padded == [[1, 2, 3], [0, 0, 4]]
    assert mask == [[1, 1, 1], [0, 0, 1]]


def test_cut_at_stop_drops_stop_and_padding_but_counts_the_stop() -> None:
    assert cut_at_stop([7, 8, 2, 2, 2], {2}) == ([7, 8], 3)
    assert cut_at_stop([7, 8, 9], {2}) == ([7, 8, 9], 3)
    assert cut_at_stop([2, 2], {2, 5}) == ([], 1)


def test_shared_rows_map_each_row_to_the_first_row_of_its_prompt() -> None:
    assert shared_rows([4, 4, 7, 4, 9, 7]) == ([0, 2, 4], [0, 0, 1, 0, 2, 1])
    assert shared_rows([1, 2]) == ([0, 1], [0, 1])


def test_group_by_prompt_restores_order_and_repeats_greedy() -> None:
    assert group_by_prompt(["b0", "a0", "b1", "a1"], [1, 0, 1, 0], 2, 2) == [["a0", "a1"], ["b0", "b1"]]
    assert group_by_prompt(["a", "b"], [0, 1], 2, 3) == [["a", "a", "a"], ["b", "b", "b"]]
    with pytest.raises(ValueError):
        group_by_prompt(["a", "a"], [0, 0], 2, 3)


# --- the seeded sampler ----------------------------------------------------------------


def test_sample_from_probs_inverts_the_cumulative_distribution() -> None:
    import torch

    from mucode.engines.seeded_sampler import sample_from_probs

    probs = torch.tensor([[0.5, 0.3, 0.2]] * 4)
    uniforms = torch.tensor([0.4, 0.7, 0.9, 1.0])
    assert sample_from_probs(probs, uniforms, top_p=1.0).tolist() == [0, 1, 2, 2]
    # Unnormalised weights sample the same distribution.
    assert sample_from_probs(probs * 7, uniforms, top_p=1.0).tolist() == [0, 1, 2, 2]
    # top_p 0.6 keeps {0, 1} (0.5 < 0.6 before token 1; 0.8 >= 0.6 before token 2), whose
    # mass 0.8 scales the targets: 0.32, 0.56, 0.72, 0.8.
    assert sample_from_probs(probs, uniforms, top_p=0.6).tolist() == [0, 1, 1, 1]
    assert sample_from_probs(probs, uniforms, top_p=0.1).tolist() == [0, 0, 0, 0]


def test_sample_from_probs_matches_the_distribution() -> None:
    import torch

    from mucode.engines.seeded_sampler import sample_from_probs

    probs = torch.tensor([0.1, 0.0, 0.6, 0.3]).repeat(20000, 1)
    uniforms = 1.0 - torch.rand(20000, generator=torch.Generator().manual_seed(0))
    counts = Counter(sample_from_probs(probs, uniforms, top_p=1.0).tolist())
    assert counts[1] == 0
    for token, probability in [(0, 0.1), (2, 0.6), (3, 0.3)]:
        assert abs(counts[token] / 20000 - probability) < 0.015


def test_seeded_sampler_rows_do_not_depend_on_their_batch() -> None:
    import torch

    from mucode.engines.seeded_sampler import SeededSampler

    scores = torch.randn(3, 50, generator=torch.Generator().manual_seed(1))
    together = SeededSampler([11, 22, 33], temperature=1.0, top_p=1.0, device="cpu")
    alone = SeededSampler([22], temperature=1.0, top_p=1.0, device="cpu")
    picks_together, picks_alone = [], []
    for _ in range(20):
        out = together(torch.zeros(3, 1, dtype=torch.long), scores)
        assert torch.isfinite(out).sum(dim=-1).tolist() == [1, 1, 1]
        picks_together.append(int(out[1].argmax()))
        picks_alone.append(int(alone(torch.zeros(1, 1, dtype=torch.long), scores[1:2]).argmax()))
    assert picks_together == picks_alone
    assert len(set(picks_alone)) > 1  # it samples, it is not greedy


def test_auto_threads_leave_cores_busy_with_other_work_alone() -> None:
    assert auto_num_threads(2, load_average=0.3, own_threads=0) == 2
    assert auto_num_threads(2, load_average=2.2, own_threads=2) == 2  # only our own load
    assert auto_num_threads(2, load_average=6.0, own_threads=2) == 1
    assert auto_num_threads(2, load_average=1.4, own_threads=0) == 1
    assert auto_num_threads(8, load_average=3.0, own_threads=0) == 5
    assert auto_num_threads(8, load_average=40.0, own_threads=8) == 1


def test_cpu_thread_budget_respects_a_cgroup_quota() -> None:

    cores = len(os.sched_getaffinity(0))
    assert cpu_thread_budget("max 100000") == cores
    assert cpu_thread_budget("50000 100000") == 1
    assert cpu_thread_budget(f"{cores * 400000} 100000") == cores
    assert cpu_thread_budget("") == cores


# --- make_engine -----------------------------------------------------------------------


def test_unknown_engine_kind_is_one_line() -> None:
    with pytest.raises(UnknownEngineError) as error:
        make_engine("vllm", BUNDLED)
    assert "\n" not in str(error.value) and "hf" in str(error.value) and "sglang" in str(error.value)


def test_sglang_engine_without_sglang_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *rest: None if name == "sglang" else real_find_spec(name, *rest)
    )
    with pytest.raises(EngineUnavailableError) as error:
        make_engine("sglang", BUNDLED, tp_size=1)
    assert str(error.value) == "the sglang engine needs a GPU machine and `pip install 'mucode[gpu]'`"
    assert str(error.value) == SGLANG_MISSING


# --- engines on the bundled model (slow) -------------------------------------------------


@pytest.fixture(scope="session")
def bundled_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Same path as in test_models.py: the bundled model is converted once per run."""
    return tmp_path_factory.getbasetemp() / "mucode-models"


@pytest.fixture(scope="session")
def bundled_dir(bundled_cache: Path) -> str:
    from mucode.models import resolve_model

    return resolve_model(BUNDLED, cache_dir=bundled_cache)


@pytest.fixture(scope="module")
def hf_engine(bundled_dir: str):
    with make_engine("hf", bundled_dir, batch_size=4) as engine:
        yield engine


@pytest.mark.slow
def test_hf_outputs_are_conversation_by_sample(hf_engine) -> None:
    replies = hf_engine.generate(CONVERSATIONS, 3, SamplingParams(temperature=0.8, max_new_tokens=8, seed=0))
    assert len(replies) == 3 and all(len(samples) == 3 for samples in replies)
    assert all(isinstance(reply, str) and reply for samples in replies for reply in samples)
    assert hf_engine.generate([], 3, SamplingParams()) == []


@pytest.mark.slow
def test_hf_prompt_is_the_chat_template_with_generation_prompt(hf_engine) -> None:
    ids = hf_engine.prompt_token_ids(CONVERSATIONS[:1])[0]
    text = hf_engine.tokenizer.decode(ids)
    assert text.startswith("<|im_start|>") and text.endswith("<|im_start|>assistant\n")
    assert "Write a Python function `add(a, b)`" in text
    assert hf_engine.tokenizer.convert_tokens_to_ids("<|im_end|>") in hf_engine.stop_ids


@pytest.mark.slow
def test_hf_greedy_is_deterministic_and_identical_across_samples(hf_engine) -> None:
    greedy = SamplingParams(temperature=0, max_new_tokens=10)
    first = hf_engine.generate(CONVERSATIONS, 2, greedy)
    assert first == hf_engine.generate(CONVERSATIONS, 2, greedy)
    assert all(samples[0] == samples[1] for samples in first)


@pytest.mark.slow
def test_hf_seeded_sampling_is_reproducible_in_a_new_engine(hf_engine, bundled_dir: str) -> None:
    sampling = SamplingParams(temperature=1.0, max_new_tokens=10, seed=7)
    first = hf_engine.generate(CONVERSATIONS, 2, sampling)
    assert first == hf_engine.generate(CONVERSATIONS, 2, sampling)
    with make_engine("hf", bundled_dir, batch_size=2) as fresh:
        assert fresh.generate(CONVERSATIONS, 2, sampling) == first
    other_seed = hf_engine.generate(CONVERSATIONS, 2, SamplingParams(temperature=1.0, max_new_tokens=10, seed=8))
    assert other_seed != first


@pytest.mark.slow
def test_hf_batched_outputs_equal_one_at_a_time_outputs(hf_engine) -> None:
    """Bucketing reorders draws; results must come back in call order and, thanks to
    left padding and per-draw seeds, equal the results of generating each alone.
    Short generations (8 tokens) keep float32 near-ties from flipping a token."""
    for sampling in (SamplingParams(temperature=0, max_new_tokens=8), SamplingParams(max_new_tokens=8, seed=3)):
        batched = hf_engine.generate(CONVERSATIONS, 2, sampling)
        alone = [hf_engine.generate([conversation], 2, sampling)[0] for conversation in CONVERSATIONS]
        assert batched == alone


@pytest.mark.slow
def test_hf_shared_prefill_gives_the_same_samples_as_separate_prefills(hf_engine, monkeypatch) -> None:
    sampling = SamplingParams(temperature=1.0, max_new_tokens=8, seed=11)
    shared = hf_engine.generate(CONVERSATIONS, 3, sampling)
    monkeypatch.setattr(hf_engine, "share_prefill", False)
    assert hf_engine.generate(CONVERSATIONS, 3, sampling) == shared


@pytest.mark.slow
def test_hf_tokens_generated_counts_real_tokens_only(hf_engine) -> None:
    greedy = SamplingParams(temperature=0, max_new_tokens=16)
    prompts = hf_engine.prompt_token_ids(CONVERSATIONS)
    before = hf_engine.tokens_generated
    raw = hf_engine.generate_raw(prompts, greedy)
    counted = hf_engine.tokens_generated - before
    # A reply that stopped early counts its stop token; padding after it counts nothing.
    assert counted == sum(min(len(reply) + 1, 16) for reply in raw)
    assert any(len(reply) < 15 for reply in raw), "one reply should stop early for this test to bite"
    assert counted < 16 * len(prompts)
    # The engine's own path decodes the same greedy tokens, stop tokens removed.
    before = hf_engine.tokens_generated
    texts = hf_engine.generate(CONVERSATIONS, 1, greedy)
    assert hf_engine.tokens_generated - before == counted
    assert [samples[0] for samples in texts] == [
        hf_engine.tokenizer.decode(reply, skip_special_tokens=True) for reply in raw
    ]
    assert not any("<|im_end|>" in samples[0] for samples in texts)


@pytest.mark.slow
def test_hf_engine_refuses_work_after_close(bundled_dir: str) -> None:
    engine = make_engine("hf", bundled_dir, batch_size=1)
    engine.close()
    engine.close()
    with pytest.raises(EngineClosedError):
        engine.generate(CONVERSATIONS[:1], 1, SamplingParams(max_new_tokens=2))


# --- the ct2 engine (CTranslate2) -----------------------------------------------------------


def test_ct2_stored_weights_and_conversion_key() -> None:
    from mucode.engines.ct2 import batch_seed, conversion_key, stored_weights
    from mucode.engines.sampling import Draw

    assert [stored_weights(kind) for kind in ("int8", "int8_float32", "int16", "float32")] == [
        "int8", "int8", "int16", "float32"]
    with pytest.raises(ValueError, match="bfloat16"):
        stored_weights("bfloat16")
    keys = {conversion_key(fingerprint, weights, version)
            for fingerprint in ("a" * 64, "b" * 64) for weights in ("int8", "float32") for version in ("4.8.5", "4.9")}
    assert len(keys) == 8  # the checkpoint's content, the weight type and the converter each change the key
    draws = [Draw(0, 0, 5), Draw(1, 0, 6)]
    assert batch_seed(draws) == batch_seed(list(draws)) < 2**32
    assert batch_seed(draws) != batch_seed(draws[::-1]) != batch_seed([Draw(0, 0, 7), Draw(1, 0, 6)])


def test_ct2_engine_without_ctranslate2_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from mucode.engines.ct2 import CT2_MISSING

    monkeypatch.setitem(sys.modules, "ctranslate2", None)  # import now raises ImportError
    with pytest.raises(EngineUnavailableError) as error:
        make_engine("ct2", BUNDLED)
    assert str(error.value) == CT2_MISSING


@pytest.fixture(scope="module")
def ct2_float32(bundled_dir: str, bundled_cache: Path):
    with make_engine("ct2", bundled_dir, batch_size=4, compute_type="float32", cache_dir=bundled_cache) as engine:
        yield engine


@pytest.mark.slow
def test_ct2_float32_greedy_equals_hf_greedy(ct2_float32, hf_engine) -> None:
    """Same chat template, stop tokens and greedy decoding: with float32 weights the text is
    identical on these prompts (a near tie could flip a token on others; int8 differs more,
    bounded on HumanEval by bench/engines.py)."""
    greedy = SamplingParams(temperature=0, max_new_tokens=48)
    assert ct2_float32.prompt_token_ids(CONVERSATIONS) == hf_engine.prompt_token_ids(CONVERSATIONS)
    assert ct2_float32.stop_ids == hf_engine.stop_ids
    ct2_replies = ct2_float32.generate(CONVERSATIONS, 2, greedy)
    assert ct2_replies == hf_engine.generate(CONVERSATIONS, 2, greedy)
    assert all(samples[0] == samples[1] and samples[0] for samples in ct2_replies)


@pytest.mark.slow
def test_ct2_tokens_generated_counts_the_stop_token_not_padding(ct2_float32, hf_engine) -> None:
    greedy = SamplingParams(temperature=0, max_new_tokens=16)
    prompts = ct2_float32.prompt_token_ids(CONVERSATIONS)
    before = ct2_float32.tokens_generated
    replies = ct2_float32.generate_token_ids(prompts, greedy, seed=0)
    assert ct2_float32.tokens_generated - before == sum(min(len(reply) + 1, 16) for reply in replies)
    assert any(len(reply) < 15 for reply in replies), "one reply should stop early for this test to bite"
    assert not any(set(reply) & set(ct2_float32.stop_ids) for reply in replies)
    before = hf_engine.tokens_generated
    assert replies == hf_engine.generate_raw(prompts, greedy)
    assert hf_engine.tokens_generated - before == sum(min(len(reply) + 1, 16) for reply in replies)


@pytest.mark.slow
def test_ct2_seeded_sampling_repeats_for_equal_seeds_and_differs_otherwise(bundled_dir: str, bundled_cache: Path) -> None:
    sampling = SamplingParams(temperature=1.0, max_new_tokens=12, seed=7)
    with make_engine("ct2", bundled_dir, batch_size=4, cache_dir=bundled_cache) as engine:
        assert engine.compute_type == "int8"  # the default
        first = engine.generate(CONVERSATIONS, 3, sampling)
        assert [len(samples) for samples in first] == [3, 3, 3]
        assert first == engine.generate(CONVERSATIONS, 3, sampling)
        # Identical conversations in one call still get distinct samples.
        assert len({reply for samples in first for reply in samples}) == 9
        other_seed = engine.generate(CONVERSATIONS, 3, SamplingParams(temperature=1.0, max_new_tokens=12, seed=8))
        assert all(a != b for a, b in zip(first, other_seed, strict=True))
    with make_engine("ct2", bundled_dir, batch_size=4, cache_dir=bundled_cache) as fresh:
        assert fresh.generate(CONVERSATIONS, 3, sampling) == first
    fresh.close()
    with pytest.raises(EngineClosedError):
        fresh.generate(CONVERSATIONS[:1], 1, sampling)


@pytest.mark.slow
def test_ct2_hands_a_batchs_prefill_memory_back_after_the_batch(bundled_dir: str, bundled_cache: Path) -> None:
    """A rollout's heap reached 7 GiB: each batch's prefill memory stayed in the heap (kept
    for reuse by `keep_freed_memory`) and fragmented. After a call the resident set is back
    near where it started."""
    from mucode.peak_rss import peak_rss_bytes, reset_peak_rss

    def resident_mb() -> float:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    long_prompts = [[{"role": "user", "content": f"{i}: " + "def f(x):\n    return x + 1\n" * 90}] for i in range(8)]
    with make_engine("ct2", bundled_dir, batch_size=8, cache_dir=bundled_cache) as engine:
        engine.generate(long_prompts[:1], 1, SamplingParams(temperature=0.0, max_new_tokens=2))
        before = resident_mb()
        reset_peak_rss()
        engine.generate(long_prompts, 1, SamplingParams(temperature=0.7, max_new_tokens=4, seed=1))
        peak_mb, after = peak_rss_bytes() / 2**20, resident_mb()
    assert peak_mb - before > 300, "the batch should need real prefill memory, else this tests nothing"
    assert after - before < 100, (before, peak_mb, after)


@pytest.mark.slow
def test_ct2_conversion_is_cached_per_checkpoint_content(bundled_dir: str, tmp_path: Path) -> None:
    """A fine-tuned checkpoint is served: its conversion is keyed on its weights, so a
    changed checkpoint at the same path gets a new conversion, and the old one stays."""
    import shutil

    from safetensors.numpy import load_file, save_file

    from mucode.engines.ct2 import ensure_converted

    checkpoint, cache = tmp_path / "checkpoint", tmp_path / "cache"
    shutil.copytree(bundled_dir, checkpoint)
    first = ensure_converted(str(checkpoint), "int8", cache)
    assert ensure_converted(str(checkpoint), "int8", cache) == first
    weights = load_file(checkpoint / "model.safetensors")
    name = next(key for key in weights if key.endswith("layers.0.mlp.down_proj.weight"))
    weights[name] = weights[name] * 1.5
    save_file(weights, checkpoint / "model.safetensors", metadata={"format": "pt"})
    second = ensure_converted(str(checkpoint), "int8", cache)
    assert second != first and first.is_dir() and (second / "model.bin").is_file()
    assert sorted(path.name for path in (cache / "ct2").iterdir() if not path.name.startswith(".")) == sorted(
        [first.name, second.name])


@pytest.mark.slow
def test_ct2_conversion_failure_is_one_line(tmp_path: Path) -> None:
    from mucode.engines.ct2 import ConversionError, ensure_converted

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "no-such-architecture"}')
    with pytest.raises(ConversionError) as error:
        ensure_converted(str(broken), "int8", tmp_path / "cache")
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"CTranslate2 cannot convert model {broken}: ")
    assert [path.name for path in (tmp_path / "cache" / "ct2").iterdir() if not path.name.endswith(".lock")] == []


# --- the openvino engine (OpenVINO GenAI) and its GGUF export ---------------------------------


def test_gguf_names_map_onto_transformers_names() -> None:
    from mucode.gguf_export import GGUFExportError, transformers_name

    assert transformers_name("token_embd.weight") == "model.embed_tokens.weight"
    assert transformers_name("output.weight") == "lm_head.weight"
    assert transformers_name("blk.11.attn_k.bias") == "model.layers.11.self_attn.k_proj.bias"
    assert transformers_name("blk.0.ffn_down.weight") == "model.layers.0.mlp.down_proj.weight"
    with pytest.raises(GGUFExportError, match="blk.0.attn_qkv.weight"):
        transformers_name("blk.0.attn_qkv.weight")


def test_rotary_interleave_is_what_transformers_undoes_when_it_loads_a_gguf() -> None:
    import numpy as np
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    from mucode.gguf_export import interleave_rotary_halves

    # One head of dimension 4: the halves (0, 1) and (2, 3) interleave to 0, 2, 1, 3.
    rows = np.arange(4, dtype=np.float32)[:, None]
    assert interleave_rotary_halves(rows, heads=1)[:, 0].tolist() == [0, 2, 1, 3]
    weight = np.random.default_rng(0).normal(size=(3 * 8, 5)).astype(np.float32)  # 3 heads of 8
    undo = LlamaTensorProcessor(config={"num_attention_heads": 3, "num_key_value_heads": 3})
    assert np.array_equal(undo.process(interleave_rotary_halves(weight, heads=3), "blk.0.attn_q.weight").weights, weight)


def test_openvino_export_key_changes_with_checkpoint_and_exporter() -> None:
    from mucode.engines.openvino import export_key

    keys = {export_key(fingerprint, version) for fingerprint in ("a" * 64, "b" * 64) for version in ("0.19.0", "0.20")}
    assert len(keys) == 4


def test_openvino_engine_without_openvino_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from mucode.engines.openvino import OPENVINO_MISSING

    monkeypatch.setitem(sys.modules, "openvino_genai", None)  # import now raises ImportError
    with pytest.raises(EngineUnavailableError) as error:
        make_engine("openvino", BUNDLED)
    assert str(error.value) == OPENVINO_MISSING


@pytest.mark.slow
def test_gguf_export_of_the_bundled_checkpoint_reproduces_its_gguf(bundled_dir: str, bundled_cache: Path,
                                                                   tmp_path: Path) -> None:
    """The bundled safetensors were dequantised from the bundled GGUF (and un-interleaved by
    transformers); written back they give the same tensors to Q8_0's rounding, and the same
    tokenizer and chat template. A wrong name, shape or row order would be off by O(1)."""
    import numpy as np
    from gguf import GGMLQuantizationType, GGUFReader
    from gguf.quants import dequantize

    from mucode.engines.openvino import ensure_exported
    from mucode.gguf_export import field_value, find_template
    from mucode.models import bundled_part_paths

    (template,) = bundled_part_paths("smollm2-135m-instruct")
    assert find_template(bundled_dir, tmp_path, bundled_cache) == template
    original, exported = GGUFReader(str(template)), GGUFReader(str(ensure_exported(bundled_dir, bundled_cache)))
    for key in ("tokenizer.ggml.tokens", "tokenizer.chat_template", "llama.attention.head_count_kv"):
        assert field_value(exported.fields[key]) == field_value(original.fields[key])
    assert field_value(exported.fields["general.file_type"]) == 7  # Q8_0
    written = {tensor.name: tensor for tensor in exported.tensors}
    assert sorted(written) == sorted(tensor.name for tensor in original.tensors)
    for tensor in original.tensors:
        mine = written[tensor.name]
        expected = dequantize(tensor.data, tensor.tensor_type).reshape(-1)
        got = dequantize(mine.data, mine.tensor_type).reshape(-1)
        assert mine.tensor_type in (GGMLQuantizationType.Q8_0, GGMLQuantizationType.F32)
        assert np.abs(got - expected).max() <= 0.01 * np.abs(expected).max(), tensor.name


@pytest.mark.slow
def test_gguf_export_of_another_architecture_is_one_line(tiny_model: str, tmp_path: Path) -> None:
    """The 1-layer test model has the bundled tokenizer but not the bundled shapes."""
    from mucode.engines.openvino import ExportError, ensure_exported

    with pytest.raises(ExportError) as error:
        ensure_exported(tiny_model, tmp_path / "cache")
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"cannot write model {tiny_model} as GGUF for the openvino engine")
    assert "not of the template's architecture" in message
    assert [path.name for path in (tmp_path / "cache" / "openvino").iterdir() if not path.name.endswith(".lock")] == []


@pytest.fixture(scope="module")
def openvino_engine(bundled_dir: str, bundled_cache: Path):
    with make_engine("openvino", bundled_dir, batch_size=8, cache_dir=bundled_cache) as engine:
        yield engine


@pytest.mark.slow
def test_openvino_prompts_and_stops_are_the_hf_engines(openvino_engine, hf_engine) -> None:
    assert openvino_engine.prompt_token_ids(CONVERSATIONS) == hf_engine.prompt_token_ids(CONVERSATIONS)
    assert openvino_engine.stop_ids == hf_engine.stop_ids
    greedy = SamplingParams(temperature=0, max_new_tokens=16)
    replies = openvino_engine.generate(CONVERSATIONS, 2, greedy)
    assert replies == openvino_engine.generate(CONVERSATIONS, 2, greedy)
    assert all(samples[0] == samples[1] and samples[0] for samples in replies)
    assert not any("<|im_end|>" in samples[0] for samples in replies)


@pytest.mark.slow
def test_openvino_tokens_generated_counts_the_stop_token(openvino_engine) -> None:
    greedy = SamplingParams(temperature=0, max_new_tokens=16)
    prompts = openvino_engine.prompt_token_ids(CONVERSATIONS)
    draws = plan_draws(prompts, 1, 0)
    before = openvino_engine.tokens_generated
    replies = openvino_engine.generate_draws(prompts, draws, greedy)
    assert openvino_engine.tokens_generated - before == sum(min(len(reply) + 1, 16) for reply in replies)
    assert any(len(reply) < 15 for reply in replies), "one reply should stop early for this test to bite"
    assert not any(set(reply) & set(openvino_engine.stop_ids) for reply in replies)


@pytest.mark.slow
def test_openvino_draws_are_seeded_one_by_one(openvino_engine, bundled_dir: str, bundled_cache: Path) -> None:
    """Each draw is its own request with its own seed: a call repeats, a draw's sample is the
    same alone as in a batch, and another seed gives other samples."""
    sampling = SamplingParams(temperature=1.0, max_new_tokens=12, seed=7)
    first = openvino_engine.generate(CONVERSATIONS, 3, sampling)
    assert [len(samples) for samples in first] == [3, 3, 3]
    assert first == openvino_engine.generate(CONVERSATIONS, 3, sampling)
    assert len({reply for samples in first for reply in samples}) == 9
    assert [openvino_engine.generate([conversation], 3, sampling)[0] for conversation in CONVERSATIONS] == first
    other_seed = openvino_engine.generate(CONVERSATIONS, 3, SamplingParams(temperature=1.0, max_new_tokens=12, seed=8))
    assert all(a != b for a, b in zip(first, other_seed, strict=True))
    with make_engine("openvino", bundled_dir, batch_size=2, cache_dir=bundled_cache) as fresh:
        assert fresh.generate(CONVERSATIONS, 3, sampling) == first
    with pytest.raises(EngineClosedError):
        fresh.generate(CONVERSATIONS[:1], 1, sampling)


@pytest.mark.slow
def test_openvino_serves_a_fine_tuned_checkpoint_from_its_own_export(bundled_dir: str, bundled_cache: Path,
                                                                      tmp_path: Path) -> None:
    """A checkpoint saved as the fine-tune stage saves one (tokenizer re-saved by transformers)
    is exported under its own content hash, found its template by its tokenizer, and served."""
    import shutil

    from safetensors.numpy import load_file, save_file

    from mucode.engines.openvino import ensure_exported
    from mucode.models import load_tokenizer

    checkpoint = tmp_path / "checkpoint"
    shutil.copytree(bundled_dir, checkpoint)
    load_tokenizer(bundled_dir).save_pretrained(checkpoint)
    weights = load_file(checkpoint / "model.safetensors")
    name = next(key for key in weights if key.endswith("layers.0.mlp.down_proj.weight"))
    weights[name] = weights[name] * 1.5
    save_file(weights, checkpoint / "model.safetensors", metadata={"format": "pt"})
    exported = ensure_exported(str(checkpoint), bundled_cache)
    assert exported != ensure_exported(bundled_dir, bundled_cache) and exported.is_file()
    assert ensure_exported(str(checkpoint), bundled_cache) == exported  # once per content
    with make_engine("openvino", str(checkpoint), batch_size=2, cache_dir=bundled_cache) as engine:
        replies = engine.generate(CONVERSATIONS[:1], 2, SamplingParams(temperature=0.7, max_new_tokens=8, seed=1))
    assert len(replies[0]) == 2 and all(replies[0])
