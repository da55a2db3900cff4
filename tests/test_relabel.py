"""relabel(): the expert's targets and every baseline policy's exact rows, on constructed rollouts.

Problems (max 2 turns; `P` = passes the oracle):
  a: it0 r0: fail → P         it0 r1: fail → fail       it1 r0: P
  b: r0: fail → fail          r1: fail → fail            (nothing passes)
  c: r0: P                    r1: fail → fail
Verifier scores of the final answers make the verifier disagree with the oracle on `a`.
"""

import json
import math

import polars as pl
import pytest

from mucode.config import RelabelConfig
from mucode.environment import extend_conversation, initial_conversation
from mucode.tasks.aggregate import aggregate
from mucode.tasks.relabel import RelabelInputError, fenced_code, relabel


def answer(name: str) -> str:
    return f"Sure:\n```python\ndef {name}():\n    return 1\n```\nThat is it."


def trajectory(task_id, rollout_id, answers):
    """Rows of one rollout: `answers` = [(name, oracle_passed)], the last one final."""
    conversation, out = initial_conversation(f"problem {task_id}", f"assert {task_id}() == 1", "mbpp"), []
    for turn, (name, passed) in enumerate(answers, start=1):
        out.append({"task_id": task_id, "rollout_id": rollout_id, "turn": turn,
                    "prompt_messages": json.dumps(conversation), "response": answer(name),
                    "final": turn == len(answers), "oracle_passed": passed})
        conversation = extend_conversation(conversation, answer(name), passed, "" if passed else "AssertionError")
    return out


def frame(rows):
    return pl.DataFrame(rows)


ITERATION_0 = frame(
    trajectory("a", 0, [("a0_1", False), ("a0_2", True)]) + trajectory("a", 1, [("a1_1", False), ("a1_2", False)])
    + trajectory("b", 0, [("b0_1", False), ("b0_2", False)]) + trajectory("b", 1, [("b1_1", False), ("b1_2", False)])
    + trajectory("c", 0, [("c0_1", True)]) + trajectory("c", 1, [("c1_1", False), ("c1_2", False)])
)
ITERATION_1 = frame(trajectory("a", 0, [("a_it1", True)]))
AGGREGATED = aggregate(aggregate(None, ITERATION_0, 0), ITERATION_1, 1)
SCORES = pl.DataFrame({
    "task_id": ["a", "a", "a", "b", "b", "c", "c"],
    "response": [answer(n) for n in ["a0_2", "a1_2", "a_it1", "b0_2", "b1_2", "c0_1", "c1_2"]],
    # a: the failing a1_2 has the highest verifier score, a_it1 is the better of the passing two.
    "verifier_score": [0.2, 5.0, 0.7, -1.0, 0.3, 0.0, 2.0],
})


def prompt_of(task_id, iteration, rollout_id, turn):
    row = AGGREGATED.filter((pl.col("task_id") == task_id) & (pl.col("iteration") == iteration)
                            & (pl.col("rollout_id") == rollout_id) & (pl.col("turn") == turn))
    assert row.height == 1
    return row["prompt_messages"][0]


def all_prompts(task_id):
    return AGGREGATED.filter(pl.col("task_id") == task_id)["prompt_messages"].to_list()


def summary(sft):
    return sft.select("task_id", "prompt_messages", "completion", "policy", "target_oracle_passed").rows()


def test_target_is_the_code_in_one_fence_without_any_marker():
    assert fenced_code(answer("f")) == "```python\ndef f():\n    return 1\n```"
    assert fenced_code("x = 1") == "```python\nx = 1\n```"


def test_mucode_picks_passing_answer_over_higher_verifier_score_and_verifier_best_otherwise():
    sft = relabel(AGGREGATED, SCORES, RelabelConfig(policy="mucode"))
    targets = {task: (answer(best), passed, score) for task, best, passed, score in [
        ("a", "a_it1", True, 100.7),   # passing beats the failing a1_2 (score 5.0); a_it1 beats a0_2 (0.2)
        ("b", "b1_2", False, 0.3),     # nothing passes: the verifier's best
        ("c", "c0_1", True, 100.0),
    ]}
    expected = [(task, prompt, fenced_code(targets[task][0]), "mucode", targets[task][1])
                for task, prompt in AGGREGATED.select("task_id", "prompt_messages").rows()]
    assert summary(sft) == expected
    assert sft.height == 12  # every prefix of every trajectory, all iterations
    assert sft.filter(pl.col("task_id") == "a")["target_score"].to_list() == pytest.approx([100.7] * 5)
    assert sft.filter(pl.col("task_id") == "b")["target_score"].to_list() == pytest.approx([0.3] * 4)


def test_betas_change_the_choice():
    sft = relabel(AGGREGATED, SCORES, RelabelConfig(policy="mucode", beta_oracle=0.0, beta_verifier=1.0))
    assert set(sft.filter(pl.col("task_id") == "a")["completion"]) == {fenced_code(answer("a1_2"))}


def test_oracle_policy_uses_earliest_passing_answer_and_skips_unsolved_problems():
    sft = relabel(AGGREGATED, None, RelabelConfig(policy="oracle"))
    expected = [(task, prompt, fenced_code(answer("a0_2" if task == "a" else "c0_1")), "oracle", True)
                for task, prompt in AGGREGATED.select("task_id", "prompt_messages").rows() if task != "b"]
    assert summary(sft) == expected
    assert sft.height == 8
    assert sft["target_score"].to_list() == [100.0] * 8


def test_mucode_r_is_mucode_rows_then_oracle_rows():
    cfg = RelabelConfig(policy="mucode-r")
    sft = relabel(AGGREGATED, SCORES, cfg)
    mucode_rows = relabel(AGGREGATED, SCORES, RelabelConfig(policy="mucode"))
    oracle_rows = relabel(AGGREGATED, None, RelabelConfig(policy="oracle"))
    assert sft.rows() == mucode_rows.rows() + oracle_rows.rows()
    assert sft["policy"].to_list() == ["mucode"] * 12 + ["oracle"] * 8


def test_mucode_solved_keeps_the_mucode_rows_of_problems_whose_expert_answer_passes():
    sft = relabel(AGGREGATED, SCORES, RelabelConfig(policy="mucode-solved"))
    mucode_rows = relabel(AGGREGATED, SCORES, RelabelConfig(policy="mucode")).filter(pl.col("task_id") != "b")
    assert sft.drop("policy").rows() == mucode_rows.drop("policy").rows()  # b has no passing answer
    assert sft.height == 8 and set(sft["policy"]) == {"mucode-solved"} and sft["target_oracle_passed"].all()
    # Unlike the oracle policy, the verifier ranks the passing answers: a's target is a_it1, not a0_2.
    assert set(sft.filter(pl.col("task_id") == "a")["completion"]) == {fenced_code(answer("a_it1"))}
    with pytest.raises(RelabelInputError, match="needs verifier scores"):
        relabel(AGGREGATED, None, RelabelConfig(policy="mucode-solved"))


def test_rft_keeps_every_turn_of_successful_trajectories_with_their_own_answers():
    sft = relabel(AGGREGATED, None, RelabelConfig(policy="rft"))
    assert summary(sft) == [
        ("a", prompt_of("a", 0, 0, 1), fenced_code(answer("a0_1")), "rft", False),
        ("a", prompt_of("a", 0, 0, 2), fenced_code(answer("a0_2")), "rft", True),
        ("c", prompt_of("c", 0, 0, 1), fenced_code(answer("c0_1")), "rft", True),
        ("a", prompt_of("a", 1, 0, 1), fenced_code(answer("a_it1")), "rft", True),
    ]
    assert all(math.isnan(score) for score in sft["target_score"])


def test_single_turn_rft_keeps_first_turn_passes_prompted_by_the_first_message():
    sft = relabel(AGGREGATED, None, RelabelConfig(policy="single-turn-rft"))
    assert summary(sft) == [
        ("c", prompt_of("c", 0, 0, 1), fenced_code(answer("c0_1")), "single-turn-rft", True),
        ("a", prompt_of("a", 1, 0, 1), fenced_code(answer("a_it1")), "single-turn-rft", True),
    ]
    assert all(len(json.loads(p)) == 1 and json.loads(p)[0]["role"] == "user" for p in sft["prompt_messages"])


def test_rft_finds_a_turn_that_aggregation_deduplicated_against_another_rollout():
    # Both rollouts open with the same failing answer; only rollout 1 then succeeds.
    rollouts = frame(trajectory("d", 0, [("same", False), ("d0_2", False)])
                     + trajectory("d", 1, [("same", False), ("d1_2", True)]))
    aggregated = aggregate(None, rollouts, 0)
    assert aggregated.height == 3  # rollout 1's first turn was a repeat
    sft = relabel(aggregated, None, RelabelConfig(policy="rft"))
    assert sft["completion"].to_list() == [fenced_code(answer("same")), fenced_code(answer("d1_2"))]


def test_equal_scores_break_ties_by_earliest_answer():
    rollouts = frame(trajectory("e", 0, [("e0", False)]) + trajectory("e", 1, [("e1", False)]))
    scores = pl.DataFrame({"task_id": ["e", "e"], "response": [answer("e1"), answer("e0")],
                           "verifier_score": [1.0, 1.0]})
    sft = relabel(aggregate(None, rollouts, 0), scores, RelabelConfig())
    assert set(sft["completion"]) == {fenced_code(answer("e0"))}


def test_mucode_without_scores_says_what_to_do():
    with pytest.raises(RelabelInputError, match="needs verifier scores"):
        relabel(AGGREGATED, None, RelabelConfig(policy="mucode"))


def test_unscored_final_answer_is_reported():
    with pytest.raises(RelabelInputError, match="1 final answers have no verifier score"):
        relabel(AGGREGATED, SCORES.head(6), RelabelConfig(policy="mucode"))


def test_bad_inputs_give_one_line():
    with pytest.raises(RelabelInputError, match="aggregate is empty"):
        relabel(AGGREGATED.head(0), SCORES, RelabelConfig())
    with pytest.raises(RelabelInputError, match=r"lacks columns \['iteration'\]"):
        relabel(AGGREGATED.drop("iteration"), SCORES, RelabelConfig())
    with pytest.raises(RelabelInputError, match=r"scores frame lacks columns \['verifier_score'\]"):
        relabel(AGGREGATED, SCORES.drop("verifier_score"), RelabelConfig())


def test_no_success_gives_an_empty_frame_with_the_schema():
    failing = aggregate(None, frame(trajectory("b", 0, [("b0_1", False)])), 0)
    sft = relabel(failing, None, RelabelConfig(policy="rft"))
    assert sft.height == 0
    assert sft.columns == ["task_id", "prompt_messages", "completion", "policy", "target_oracle_passed",
                           "target_score"]
