"""Rollout stage: the batched multi-turn loop.

The fast tests drive `run_rollouts` with a scripted engine (answers fixed in advance, so the
stop and feedback rules are checked exactly) and the real local sandbox; the slow test runs
the bundled model for real.
"""

import json

import polars as pl
import pytest

from mucode.engines import SamplingParams
from mucode.sandbox import make_sandbox
from mucode.tasks.rollout import ROLLOUT_SCHEMA, RolloutInputError, run_rollouts, summarize_rollouts

PROBLEMS = pl.DataFrame({
    "task_id": ["t/add", "t/mul"],
    "dataset": ["mbpp", "mbpp"],
    "prompt": ["Write add(a, b).", "Write mul(a, b)."],
    "public_tests": ["assert add(1, 2) == 3", "assert mul(2, 3) == 6"],
    "private_tests": ["assert add(1, 2) == 3\nassert add(-1, 1) == 0", "assert mul(2, 3) == 6\nassert mul(0, 5) == 0"],
})


class ScriptedEngine:
    """Answers from a script keyed by (problem text, turn): a stand-in with exact outputs."""

    def __init__(self, script):
        self.script, self.tokens_generated, self.calls = script, 0, []

    def generate(self, conversations, n, sampling, streams=None):
        self.calls.append((len(conversations), n))
        outputs = []
        for conversation in conversations:
            turn = (len(conversation) + 1) // 2
            problem = "add" if "add(" in conversation[0]["content"] else "mul"
            outputs.append([self.script[problem][turn - 1]] * n)
            self.tokens_generated += 10 * n
        return outputs


SCRIPT = {
    "add": ["```python\ndef add(a, b):\n    return a + b\n```"],
    "mul": ["```python\ndef mul(a, b):\n    return a + b\n```", "```python\ndef mul(a, b):\n    return a * b\n```"],
}


@pytest.fixture(scope="module")
def sandbox():
    with make_sandbox("local", workers=2, timeout_s=5.0) as box:
        yield box


def test_passing_trajectory_stops_and_failing_one_gets_feedback(sandbox):
    engine = ScriptedEngine(SCRIPT)
    frame = run_rollouts(PROBLEMS, engine, sandbox, num_rollouts=2, max_turns=3, sampling=SamplingParams(seed=1))
    assert dict(frame.schema) == ROLLOUT_SCHEMA
    add = frame.filter(pl.col("task_id") == "t/add")
    assert add["turn"].to_list() == [1, 1] and add["final"].all() and add["private_passed"].all()
    mul = frame.filter(pl.col("task_id") == "t/mul")
    assert mul["turn"].to_list() == [1, 2, 1, 2]
    first, second = mul.filter(pl.col("turn") == 1).row(0, named=True), mul.filter(pl.col("turn") == 2).row(0, named=True)
    assert not first["public_passed"] and "AssertionError" in first["feedback"] and not first["final"]
    prefix = json.loads(second["prompt_messages"])
    assert [m["role"] for m in prefix] == ["user", "assistant", "user"]
    assert prefix[2]["content"] == "Feedback: " + first["feedback"]
    assert second["private_passed"] and second["final"]
    # Turn 1 sends one request per problem with n = K; turn 2 only the live trajectories.
    assert engine.calls == [(2, 2), (2, 1)]


def test_evaluation_mode_runs_all_turns(sandbox):
    frame = run_rollouts(PROBLEMS.head(1), ScriptedEngine({"add": SCRIPT["add"] * 3}), sandbox,
                         num_rollouts=1, max_turns=3, sampling=SamplingParams(), mode="eval")
    assert frame["turn"].to_list() == [1, 2, 3] and frame["final"].to_list() == [False, False, True]


def test_progress_counts_tokens_within_the_first_turn(sandbox):
    seen = []
    run_rollouts(PROBLEMS, ScriptedEngine(SCRIPT), sandbox, num_rollouts=2, max_turns=2, sampling=SamplingParams(),
                 chunk_size=1, progress=lambda stats: seen.append((stats.turn, stats.done_in_turn, stats.tokens)))
    # Turn 1 is two chunks (one problem each, K = 2 answers of 10 tokens): the display counts
    # each chunk's tokens as it finishes, not only at the end of the turn.
    assert seen[:2] == [(1, 2, 20), (1, 4, 40)]


def test_summary_rates(sandbox):
    frame = run_rollouts(PROBLEMS, ScriptedEngine(SCRIPT), sandbox, num_rollouts=1, max_turns=2, sampling=SamplingParams())
    summary = summarize_rollouts(frame)
    assert summary["final_private_pass_rate"] == 1.0 and summary["turn1_public_pass_rate"] == 0.5


def test_bad_problems_are_one_line_errors(sandbox):
    with pytest.raises(RolloutInputError, match="lacks columns"):
        run_rollouts(PROBLEMS.drop("private_tests"), ScriptedEngine(SCRIPT), sandbox, num_rollouts=1, max_turns=1,
                     sampling=SamplingParams())
    with pytest.raises(RolloutInputError, match="duplicate"):
        run_rollouts(pl.concat([PROBLEMS, PROBLEMS]), ScriptedEngine(SCRIPT), sandbox, num_rollouts=1, max_turns=1,
                     sampling=SamplingParams())


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["hf", "ct2"])
def test_bundled_model_rollouts(sandbox, data_dir, kind):
    from mucode.data import load_problems
    from mucode.engines import make_engine
    from mucode.models import resolve_model

    problems = load_problems("mbpp", "train", data_dir=data_dir, limit=3)
    with make_engine(kind, resolve_model("bundled:smollm2-135m-instruct"), batch_size=8) as engine:
        frame = run_rollouts(problems, engine, sandbox, num_rollouts=2, max_turns=2,
                             sampling=SamplingParams(temperature=0.7, max_new_tokens=64, seed=0))
        again = run_rollouts(problems, engine, sandbox, num_rollouts=2, max_turns=2,
                             sampling=SamplingParams(temperature=0.7, max_new_tokens=64, seed=0))
    assert dict(frame.schema) == ROLLOUT_SCHEMA
    assert frame.filter(pl.col("turn") == 1).height == 6
    assert frame["response"].str.len_chars().min() > 0
    # Every rollout has exactly one final turn, and a passing turn is always final.
    assert frame.group_by("task_id", "rollout_id").agg(pl.col("final").sum())["final"].to_list() == [1] * 6
    assert frame.filter(pl.col("public_passed") & pl.col("private_passed"))["final"].all()
    second_turns = frame.filter(pl.col("turn") == 2)
    assert second_turns.height > 0, "the bundled model solved everything at turn 1: use harder problems"
    row = second_turns.row(0, named=True)
    earlier = frame.filter((pl.col("task_id") == row["task_id"]) & (pl.col("rollout_id") == row["rollout_id"])
                           & (pl.col("turn") == 1)).row(0, named=True)
    assert json.loads(row["prompt_messages"])[-1]["content"] == "Feedback: " + earlier["feedback"]
    assert frame.equals(again), f"seeded rollouts on the {kind} engine must reproduce"


@pytest.mark.slow
def test_a_rollout_stage_run_again_reads_its_replies_back(tmp_path, data_dir):
    """The stage keeps the engine's replies: run again (as after a kill), it generates nothing.

    smoke.yaml's hf engine seeds each draw on its own, so replies are kept one file per conversation.
    """
    from pathlib import Path

    from mucode.artifacts import ArtifactStore
    from mucode.config import load_config
    from mucode.stage_resources import GENERATIONS_DIR
    from mucode.tasks.problems import problems_stage
    from mucode.tasks.rollout import rollout_stage

    config = Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml"
    cfg = load_config(config, {"run_dir": str(tmp_path), "data.data_dir": str(data_dir), "rollout.num_rollouts": 2,
                               "rollout.max_turns": 2, "rollout.sampling.max_new_tokens": 48, "sandbox.backend": "local"})
    root = str(tmp_path / cfg.name)
    problems = problems_stage(cfg, root, dataset="mbpp", split="train", limit=3)
    store = ArtifactStore(root)
    first = rollout_stage(cfg, root, problems, None, iteration=1)
    first_rows, first_reused = store.get_frame(first), store.manifest(first)["reused_generate_calls"]
    kept = sorted((Path(root) / GENERATIONS_DIR).glob("*.json"))
    # The same rows again: the store keeps one artifact (content-addressed), its manifest the second run's.
    again = rollout_stage(cfg, root, problems, None, iteration=1)
    again_manifest = store.manifest(again)
    assert len(kept) > 3  # 3 problems' first turns, then the failed trajectories' second turns
    assert first_reused == 0
    assert again_manifest["reused_generate_calls"] >= 2  # every call of both turns answered wholly from disk
    assert again_manifest["reused_conversations"] == len(kept)
    assert sorted((Path(root) / GENERATIONS_DIR).glob("*.json")) == kept  # nothing generated again
    assert store.get_frame(again).equals(first_rows)
