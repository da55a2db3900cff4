"""mucode.budget: the token cost model of a compare run, checked against hand counts."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from mucode.budget import Shape, Speeds, evaluation_cost, problem_count, run_cost, training_costs, turn_prompt_tokens
from mucode.config import load_config
from mucode.flows.compare import evaluation_plan

REPO = Path(__file__).resolve().parents[1]
CPU_CONFIG = REPO / "configs" / "compare-cpu.yaml"


def test_problem_counts_follow_the_limit_and_the_dataset_size():
    assert problem_count("humaneval", "test", 300) == 164
    assert problem_count("mbpp", "test", 300) == 300
    assert problem_count("mbpp", "train", None) == 374
    with pytest.raises(ValueError, match="no known size"):
        problem_count("mystery", "test", None)


def test_an_evaluation_generates_every_turn_of_every_search():
    cfg = load_config(CPU_CONFIG, {"evaluation": {"searches": 2}})
    shape = Shape(prompt_tokens=100, answer_tokens=50, feedback_tokens=30)
    speeds = Speeds(generate_tok_s=10.0, prefill_tok_s=100.0, score_tok_s=1000.0)
    cost = evaluation_cost(cfg, shape, speeds, "x", problems=10, n=5, turns=3, uses_verifier=True)
    assert cost["draws"] == 10 * 2 * 5 * 3
    assert cost["generated_tokens"] == 300 * 50
    assert turn_prompt_tokens(shape, 3) == 100 + 2 * 80
    assert cost["prefill_tokens"] == 10 * 2 * 5 * (100 + 180 + 260)
    assert cost["score_tokens"] == 300 * 150
    seconds = 300 * 50 / 10 + cost["prefill_tokens"] / 100 + 300 * 150 / 1000
    assert cost["hours"] == pytest.approx(seconds / 3600, abs=1e-3)
    without = evaluation_cost(cfg, shape, speeds, "x", problems=10, n=5, turns=3, uses_verifier=False)
    assert without["score_tokens"] == 0 and without["hours"] < cost["hours"]


def test_rollouts_stop_at_a_pass_and_arms_train_on_what_their_policy_keeps():
    cfg = load_config(CPU_CONFIG, {"data": {"train_limit": 10}, "rollout": {"num_rollouts": 2, "max_turns": 3},
                                   "iterations": 2})
    shape = Shape(train_pass_rate=0.5)
    items = {item["item"].split(" (")[0]: item for item in training_costs(cfg, shape, Speeds(), ["mucode", "rft"])}
    assert items["rollout, iteration 1"]["draws"] == round(20 * (1 + 0.5 + 0.25))
    assert items["rollout, iteration 2"]["draws"] == 2 * items["rollout, iteration 1"]["draws"]  # one per arm
    # Iteration 2 trains on the aggregate of two iterations; RFT keeps fewer examples than µCode.
    assert items["finetune mucode, iteration 2"]["train_tokens"] == pytest.approx(
        2 * items["finetune mucode, iteration 1"]["train_tokens"], abs=2)
    assert items["finetune rft, iteration 1"]["train_tokens"] < items["finetune mucode, iteration 1"]["train_tokens"]


def test_run_cost_counts_reused_evaluations_as_free_and_scales_with_speed():
    cfg = load_config(CPU_CONFIG)
    plan = evaluation_plan(cfg)
    cost = run_cost(cfg, plan)
    reused = [item for item in cost["items"] if item.get("reuses")]
    assert reused and all(item["hours"] == 0 for item in reused)  # the base model's T=1 row
    evaluations = [item for item in cost["items"] if item["item"].startswith("evaluate")]
    assert len(evaluations) == sum(len(item.datasets or cfg.data.eval_datasets) for item in plan)
    twice = run_cost(cfg, plan, replace(Speeds(), generate_tok_s=2 * Speeds().generate_tok_s))
    assert twice["total_hours"] < cost["total_hours"]
    assert cost["total_hours"] == pytest.approx(cost["training_hours"] + cost["evaluation_hours"], abs=0.02)
    assert cost["within_budget"] == (cost["total_hours"] <= Speeds().budget_hours)


def test_stopping_at_the_public_pass_saves_the_turns_after_it():
    cfg = load_config(CPU_CONFIG)
    stopping = load_config(CPU_CONFIG, ["evaluation.stop_at_public_pass=true"])
    shape = Shape(eval_public_pass_rate=0.5)
    every = evaluation_cost(cfg, shape, Speeds(), "x", problems=8, n=5, turns=3, uses_verifier=False)
    fewer = evaluation_cost(stopping, shape, Speeds(), "x", problems=8, n=5, turns=3, uses_verifier=False)
    assert every["draws"] == 8 * 5 * 3 and fewer["draws"] == 8 * 5 * (1 + 0.5 + 0.25)
    assert fewer["hours"] < every["hours"]


def test_the_ablations_first_turn_is_read_from_the_generation_memo():
    cfg = load_config(REPO / "configs" / "compare-cpu-qwen.yaml")
    shape = Shape(eval_public_pass_rate=0.5)
    fresh = evaluation_cost(cfg, shape, Speeds(), "x", problems=8, n=5, turns=3, uses_verifier=True)
    memoized = evaluation_cost(cfg, shape, Speeds(), "x", problems=8, n=5, turns=3, uses_verifier=True,
                               first_turn_memoized=True)
    assert fresh["draws"] == 8 * 5 * 1.75 and memoized["draws"] == 8 * 5 * 0.75
    assert memoized["score_tokens"] == fresh["score_tokens"]  # every candidate is still scored
    items = run_cost(cfg, evaluation_plan(cfg), shape=shape)["items"]
    # The reference evaluation (µCode, N=5, pt+lv) generates its first turn; the ablation's rules read it.
    ablation = [item for item in items if item["item"].startswith("evaluate mucode N=5")]
    assert [item.get("first_turn") for item in ablation] == [None, "memoized", "memoized", "memoized"]
    assert all(item["draws"] < ablation[0]["draws"] for item in ablation[1:])
    strongest = next(item for item in items if item["item"].startswith("evaluate strongest-baseline N=5"))
    assert "first_turn" not in strongest  # another generator: nothing to reuse
