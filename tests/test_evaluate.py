"""The evaluate stage: selection rules, summaries of hand-made searches, the batched search
with a scripted engine and the real local sandbox, and (slow) the bundled model end to end."""

from __future__ import annotations

import json
import math
import random
import re
import struct
from pathlib import Path

import polars as pl
import pytest

from mucode.metrics import pass_at_k
from mucode.best_of_n import ROW_SCHEMA
from mucode.eval_summary import summarize
from mucode.selection import EvaluationError, check_selection, search_rng, select_candidate
from mucode.tasks.evaluate import scaling_plan


def search_rows(task_id: str, search_id: int, public: list[bool], private: list[bool], n: int = 2,
                selection: str = "pt") -> list[dict]:
    return [
        {"task_id": task_id, "dataset": "humaneval", "search_id": search_id, "turn": turn, "n": n,
         "selection": selection, "selected": 0, "response": "", "code": "", "public_passed": pub,
         "private_passed": priv, "verifier_score": math.nan, "num_public_passing_candidates": int(pub)}
        for turn, (pub, priv) in enumerate(zip(public, private), start=1)
    ]


def frame(*searches: list[dict]) -> pl.DataFrame:
    return pl.DataFrame([row for rows in searches for row in rows], schema=ROW_SCHEMA)


# --- selection ---------------------------------------------------------------------------------


def test_pt_picks_only_public_passing_candidates():
    rng = random.Random(0)
    picks = {select_candidate("pt", [False, True, False, True], None, rng) for _ in range(200)}
    assert picks == {1, 3}


def test_pt_falls_back_to_any_candidate_when_none_pass():
    rng = random.Random(0)
    picks = {select_candidate("pt", [False, False, False], None, rng) for _ in range(200)}
    assert picks == {0, 1, 2}


def test_lv_picks_the_highest_score_whatever_the_public_tests_say():
    assert select_candidate("lv", [True, False, True], [0.1, 2.0, -1.0], random.Random(0)) == 1


def test_pt_plus_lv_puts_public_passes_first_then_the_verifier():
    assert select_candidate("pt+lv", [True, False, True], [0.1, 50.0, 0.7], random.Random(0)) == 2
    # Nothing passes: the verifier alone decides.
    assert select_candidate("pt+lv", [False, False], [0.3, 0.9], random.Random(0)) == 1


def test_equal_scores_pick_the_first_candidate():
    assert select_candidate("lv", [False, False, False], [0.5, 0.5, 0.5], random.Random(0)) == 0


def test_random_selection_is_reproducible_per_search_and_covers_all_candidates():
    first = [select_candidate("random", [True] * 5, None, search_rng(0, "humaneval/1", 2)) for _ in range(3)]
    again = [select_candidate("random", [True] * 5, None, search_rng(0, "humaneval/1", 2)) for _ in range(3)]
    assert first == again
    rng = search_rng(0, "humaneval/1", 2)
    assert {select_candidate("random", [False] * 5, None, rng) for _ in range(300)} == set(range(5))
    other = [[select_candidate("random", [True] * 5, None, search_rng(seed, "t", 0)) for _ in range(8)]
             for seed in range(4)]
    assert len({tuple(picks) for picks in other}) > 1


@pytest.mark.parametrize("rule", ["lv", "pt+lv"])
def test_verifier_rules_without_a_verifier_fail_with_one_line(rule):
    with pytest.raises(EvaluationError) as error:
        check_selection(rule, has_verifier=False)
    assert str(error.value) == f"selection {rule} needs --verifier; use pt for a base model"


def test_unknown_selection_names_the_valid_rules():
    with pytest.raises(EvaluationError, match="use one of random, lv, pt, pt\\+lv"):
        check_selection("best", has_verifier=True)


def test_mismatched_scores_are_an_error():
    with pytest.raises(EvaluationError, match="2 verifier scores for 3 candidates"):
        select_candidate("lv", [True, True, True], [0.1, 0.2], random.Random(0))


def test_scaling_plan_runs_the_main_n_first_and_each_n_once():
    assert scaling_plan(5, [1, 2, 4, 5, 8, 2]) == [5, 1, 2, 4, 8]
    with pytest.raises(EvaluationError, match=">= 1"):
        scaling_plan(5, [0])


# --- summaries ----------------------------------------------------------------------------------


def metrics_from_rows(rows: pl.DataFrame, t: int) -> dict[str, float]:
    """bon@t, public@t and solved@t from evaluation rows by a second route (polars, not mucode.metrics)."""
    within = rows.filter(pl.col("turn") <= t).sort("task_id", "search_id", "turn")
    per_search = within.group_by("task_id", "search_id").agg(
        bon=pl.col("private_passed").filter(pl.col("public_passed")).first().fill_null(False),  # first public pass
        public=pl.col("public_passed").any(), solved=pl.col("private_passed").any())
    per_problem = per_search.group_by("task_id").agg(pl.col("bon", "public", "solved").cast(pl.Float64).mean())
    return {f"{name}@{t}": per_problem[name].mean() for name in ("bon", "public", "solved")}


def test_summary_of_hand_made_searches():
    rows = frame(
        # first public pass fails privately; a later turn passes privately: still a failure
        search_rows("a", 0, [True, True, True], [False, True, True]),
        search_rows("a", 1, [False, True, True], [False, True, True]),  # success from turn 2
        search_rows("b", 0, [False, False, False], [False, False, False]),  # never passes publicly
        search_rows("b", 1, [False, False, False], [False, False, True]),  # private pass, never submitted
        search_rows("c", 0, [True, True, True], [True, True, True]),
        search_rows("c", 1, [True, False, False], [True, False, False]),
    )
    summary = summarize(rows)
    assert (summary["problems"], summary["searches"], summary["n"], summary["turns"]) == (3, 2, 2, 3)
    # bon@t per problem: a = [0, .5, .5], b = [0, 0, 0], c = [1, 1, 1]
    assert summary["bon@1"] == pytest.approx((0 + 0 + 1) / 3)
    assert summary["bon@2"] == pytest.approx((0.5 + 0 + 1) / 3)
    assert summary["bon@3"] == pytest.approx((0.5 + 0 + 1) / 3)
    # solved@3: a both searches, b one, c both
    assert summary["solved@3"] == pytest.approx((1 + 0.5 + 1) / 3)
    assert summary["pass@1"] == summary["solved@3"]
    assert summary["pass@2"] == pytest.approx((1 + pass_at_k(2, 1, 2) + 1) / 3)
    assert summary["public@1"] == pytest.approx((0.5 + 0 + 1) / 3)
    assert summary["public@3"] == pytest.approx((1 + 0 + 1) / 3)
    assert summary["single_turn_pass@1"] == pytest.approx((0 + 0 + 1) / 3)
    assert "pass@5" not in summary
    for t in (1, 2, 3):  # the second route the end-to-end test checks real rows with
        assert metrics_from_rows(rows, t) == pytest.approx({name: summary[name] for name in
                                                            (f"bon@{t}", f"public@{t}", f"solved@{t}")})
    for metric in ("bon@3", "pass@1", "solved@2", "public@2", "single_turn_pass@1"):
        assert summary[f"{metric}.ci_low"] <= summary[metric] <= summary[f"{metric}.ci_high"]
    assert summary["bon@3.ci_low"] < summary["bon@3.ci_high"]


def test_summary_does_not_depend_on_row_order():
    rows = frame(search_rows("a", 0, [False, True], [False, True]), search_rows("b", 0, [True, True], [False, True]))
    shuffled = rows.sample(fraction=1.0, shuffle=True, seed=1)
    assert summarize(shuffled) == summarize(rows)


def test_summary_rejects_a_search_with_a_missing_turn():
    rows = frame(search_rows("a", 0, [True, True, True], [True, True, True])).filter(pl.col("turn") != 2)
    with pytest.raises(EvaluationError, match="a search 0 has turns \\[1, 3\\]"):
        summarize(rows)


def test_summary_rejects_mixed_n():
    rows = frame(search_rows("a", 0, [True], [True], n=1), search_rows("b", 0, [True], [True], n=2))
    with pytest.raises(EvaluationError, match="rows mix n values \\[1, 2\\]"):
        summarize(rows)


def test_summary_rejects_uneven_searches():
    rows = frame(search_rows("a", 0, [True], [True]), search_rows("a", 1, [True], [True]),
                 search_rows("b", 0, [True], [True]))
    with pytest.raises(EvaluationError, match="differ in searches"):
        summarize(rows)


def test_summary_of_nothing_is_an_error():
    with pytest.raises(EvaluationError, match="no evaluation rows"):
        summarize(pl.DataFrame(schema=ROW_SCHEMA))


# --- the batched search: scripted engine, real local sandbox --------------------------------------

from mucode.engines import SamplingParams  # noqa: E402
from mucode.engines.base import Engine  # noqa: E402
from mucode.prompts import first_user_message  # noqa: E402
from mucode.best_of_n import run_search  # noqa: E402

PRIVATE_MARKER = "assert add(123456, 1) == 123457"


def fenced(code: str) -> str:
    return f"Here you go:\n```python\n{code}\n```"


WRONG_ADD = fenced("def add(a, b):\n    return a - b")
HARDCODED_ADD = fenced("def add(a, b):\n    return 3")  # passes the public test only
RIGHT_ADD = fenced("def add(a, b):\n    return a + b")
RIGHT_NEG = fenced("def neg(x):\n    return -x")
CRASHING_NEG = fenced("def neg(x):\n    raise ValueError('boom')")

# task -> per turn -> the answers handed out to samples 0, 1, ... (cycled)
SCRIPT = {
    "add": [[WRONG_ADD, HARDCODED_ADD], [RIGHT_ADD, WRONG_ADD]],
    "neg": [[CRASHING_NEG, CRASHING_NEG], [CRASHING_NEG, RIGHT_NEG]],
}


def problems_frame() -> pl.DataFrame:
    return pl.DataFrame([
        {"task_id": "add", "dataset": "mbpp", "prompt": "Write add(a, b) returning the sum.",
         "public_tests": "assert add(1, 2) == 3",
         "private_tests": f"assert add(1, 2) == 3\nassert add(-1, 1) == 0\n{PRIVATE_MARKER}"},
        {"task_id": "neg", "dataset": "mbpp", "prompt": "Write neg(x) returning minus x.",
         "public_tests": "assert neg(2) == -2", "private_tests": "assert neg(2) == -2\nassert neg(-7) == 7"},
    ])


class ScriptedEngine(Engine):
    """Answers from SCRIPT by task (read from the first message) and turn; records every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[list[dict]], int]] = []

    def generate(self, conversations, n, sampling, streams=None):
        self.calls.append((conversations, n))
        replies = []
        for conversation in conversations:
            task = "add" if "add(a, b)" in conversation[0]["content"] else "neg"
            turns_so_far = sum(m["role"] == "assistant" for m in conversation)
            answers = SCRIPT[task][min(turns_so_far, len(SCRIPT[task]) - 1)]  # later turns repeat the last
            replies.append([answers[j % len(answers)] for j in range(n)])
        return replies

    def close(self):
        pass


class CountingSandbox:
    """The real sandbox, counting its batches."""

    def __init__(self, sandbox):
        self.sandbox, self.batches = sandbox, []

    def run(self, programs):
        self.batches.append(len(programs))
        return self.sandbox.run(programs)


class LengthScorer:
    """A verifier stand-in: prefers longer answers; records its inputs."""

    def __init__(self):
        self.inputs = []

    def score(self, prompts, answers):
        self.inputs.append((list(prompts), list(answers)))
        return [float(len(answer)) for answer in answers]


@pytest.fixture(scope="module")
def sandbox():
    from mucode.sandbox import make_sandbox

    with make_sandbox("local", workers=2, timeout_s=5.0) as real:
        yield real


def search(sandbox, selection="pt", scorer=None, n=2, turns=2, searches=3, seed=0, engine=None):
    return run_search(problems_frame(), engine or ScriptedEngine(), sandbox, scorer, n=n, turns=turns,
                      searches=searches, selection=selection, sampling=SamplingParams(max_new_tokens=16), seed=seed)


def test_search_rows_have_the_contract_schema_and_one_row_per_problem_search_turn(sandbox):
    rows = search(sandbox)
    assert rows.schema == pl.Schema(ROW_SCHEMA)
    assert rows.height == 2 * 3 * 2
    assert sorted(rows.select("task_id", "search_id", "turn").rows()) == [
        (task, s, t) for task in ("add", "neg") for s in range(3) for t in (1, 2)]
    assert set(rows["n"]) == {2} and set(rows["selection"]) == {"pt"}


def test_every_turn_is_one_generate_call_and_one_sandbox_batch_for_all_searches(sandbox):
    engine, counting = ScriptedEngine(), CountingSandbox(sandbox)
    search(counting, engine=engine, turns=3, searches=3)
    assert [(len(conversations), n) for conversations, n in engine.calls] == [(6, 2)] * 3
    assert len(counting.batches) == 3
    # Duplicate programs are run once: at most 2 distinct answers x 2 test suites per task.
    assert all(batch <= 2 * 2 * 2 for batch in counting.batches)


def test_small_chunks_split_generation_by_whole_problems_and_change_no_row(sandbox, capsys, monkeypatch):
    import mucode.progress

    whole = search(sandbox, turns=2, searches=3)
    monkeypatch.setattr(mucode.progress, "PLAIN_LINE_EVERY_S", 0.0)  # a log line at every chunk
    engine = ScriptedEngine()
    chunked = run_search(problems_frame(), engine, sandbox, None, n=2, turns=2, searches=3, selection="pt",
                         sampling=SamplingParams(max_new_tokens=16), seed=0, chunk_draws=2)
    assert chunked.equals(whole)
    # 2 draws a call would split a problem's 3 searches: each call holds one whole problem instead.
    assert [(len(conversations), n) for conversations, n in engine.calls] == [(3, 2)] * 4
    assert all(len({c[0]["content"] for c in conversations}) == 1 for conversations, _ in engine.calls)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("evaluate N=2 pt:")]
    assert [line.split()[3] for line in lines[:4]] == ["6/24", "12/24", "12/24", "18/24"]
    assert "turn 1/2" in lines[0] and "tok/s" in lines[0] and "turn 2/2" in lines[-1]


def test_pt_submits_the_first_public_pass_and_bon_counts_its_private_failure(sandbox):
    rows = search(sandbox).filter(pl.col("task_id") == "add").sort("search_id", "turn")
    turn1 = rows.filter(pl.col("turn") == 1)
    assert turn1["selected"].to_list() == [1, 1, 1]  # the hard-coded answer, the only public pass
    assert turn1["public_passed"].all() and not turn1["private_passed"].any()
    assert turn1["num_public_passing_candidates"].to_list() == [1, 1, 1]
    turn2 = rows.filter(pl.col("turn") == 2)
    assert turn2["code"].to_list() == ["def add(a, b):\n    return a + b"] * 3
    assert turn2["private_passed"].all()
    summary = summarize(search(sandbox))
    # add: submitted at turn 1 and wrong -> BoN failure although turn 2 is right; neg: right at turn 2.
    assert summary["bon@2"] == pytest.approx(0.5)
    assert summary["solved@2"] == pytest.approx(1.0)
    assert summary["bon@1"] == 0.0 and summary["public@1"] == pytest.approx(0.5)


def test_feedback_of_the_selected_answer_is_appended_and_private_tests_stay_hidden(sandbox):
    engine = ScriptedEngine()
    search(sandbox, engine=engine)
    second_turn = engine.calls[1][0]  # longest conversations first, so found by task
    add_conversation = next(c for c in second_turn if "add(a, b)" in c[0]["content"])
    neg_conversation = next(c for c in second_turn if "add(a, b)" not in c[0]["content"])
    assert [m["role"] for m in add_conversation] == ["user", "assistant", "user"]
    assert add_conversation[1]["content"] == HARDCODED_ADD
    assert add_conversation[2]["content"] == "Feedback: All public tests passed."
    assert neg_conversation[2]["content"].startswith("Feedback: ")
    assert "ValueError: boom" in neg_conversation[2]["content"]
    assert add_conversation[0]["content"] == first_user_message(
        "Write add(a, b) returning the sum.", "assert add(1, 2) == 3", "mbpp")
    every_message = [m["content"] for conversations, _ in engine.calls for c in conversations for m in c]
    assert not any(PRIVATE_MARKER in text or "neg(-7)" in text for text in every_message)


def test_lv_follows_the_verifier_and_records_its_scores(sandbox):
    scorer = LengthScorer()
    rows = search(sandbox, selection="lv", scorer=scorer, searches=1)
    turn1 = rows.filter(pl.col("turn") == 1).sort("task_id")
    longer = max(range(2), key=lambda j: (len(SCRIPT["add"][0][j]), -j))
    assert longer == 0  # WRONG_ADD: the verifier overrules the public tests under lv
    assert turn1["selected"].to_list()[0] == longer
    assert turn1["verifier_score"].to_list()[0] == float(len(SCRIPT["add"][0][longer]))
    prompts, answers = scorer.inputs[0]
    assert prompts[0] == first_user_message("Write add(a, b) returning the sum.", "assert add(1, 2) == 3", "mbpp")
    assert answers[:2] == SCRIPT["add"][0]


def test_pt_plus_lv_prefers_public_passes_over_longer_answers(sandbox):
    rows = search(sandbox, selection="pt+lv", scorer=LengthScorer(), searches=1)
    add_turn1 = rows.filter((pl.col("task_id") == "add") & (pl.col("turn") == 1))
    assert add_turn1["selected"].item() == 1 and add_turn1["public_passed"].item()


def test_random_selection_is_seeded(sandbox):
    first = search(sandbox, selection="random", searches=4, turns=2, seed=5)
    again = search(sandbox, selection="random", searches=4, turns=2, seed=5)
    assert first.equals(again)
    picks = {tuple(search(sandbox, selection="random", searches=4, seed=s)["selected"]) for s in range(4)}
    assert len(picks) > 1


def test_without_a_scorer_scores_are_nan(sandbox):
    assert search(sandbox, selection="pt")["verifier_score"].is_nan().all()


def test_a_verifier_rule_without_a_verifier_fails_before_generating(sandbox):
    engine = ScriptedEngine()
    with pytest.raises(EvaluationError, match="selection pt\\+lv needs --verifier; use pt for a base model"):
        search(sandbox, selection="pt+lv", engine=engine)
    assert engine.calls == []


@pytest.mark.parametrize("change, message", [
    ({"n": 0}, "--n must be >= 1"), ({"turns": 0}, "--turns must be >= 1"), ({"searches": 0}, "--searches must be >= 1")])
def test_sizes_below_one_are_rejected(sandbox, change, message):
    with pytest.raises(EvaluationError, match=message):
        search(sandbox, **change)


def test_problems_without_tests_are_rejected(sandbox):
    with pytest.raises(EvaluationError, match="lacks columns \\['private_tests'\\]"):
        run_search(problems_frame().drop("private_tests"), ScriptedEngine(), sandbox, None, n=1, turns=1,
                   searches=1, selection="pt", sampling=SamplingParams(), seed=0)


# --- resuming an interrupted search -------------------------------------------------------------


class Interrupted(Exception):
    """Stands for the process dying after a checkpoint was written."""


def interrupted_after(turn: int, sandbox, selection: str, n: int, turns: int, searches: int,
                      stop_at_public_pass: bool = False) -> pl.DataFrame:
    """The rows checkpointed by a search that dies right after `turn`."""
    saved: list[pl.DataFrame] = []

    def checkpoint(rows: pl.DataFrame) -> None:
        saved.append(rows)
        if len(saved) == turn:
            raise Interrupted

    with pytest.raises(Interrupted):
        run_search(problems_frame(), ScriptedEngine(), sandbox, None, n=n, turns=turns, searches=searches,
                   selection=selection, sampling=SamplingParams(max_new_tokens=16), seed=3, on_turn=checkpoint,
                   stop_at_public_pass=stop_at_public_pass)
    return saved[-1]


@pytest.mark.parametrize("selection", ["random", "pt"])
@pytest.mark.parametrize("turn", [1, 2])
def test_a_resumed_search_makes_the_rows_of_an_uninterrupted_one(sandbox, selection, turn):
    settings = dict(n=3, turns=3, searches=4, selection=selection, sampling=SamplingParams(max_new_tokens=16), seed=3)
    whole = run_search(problems_frame(), ScriptedEngine(), sandbox, None, **settings)
    finished = interrupted_after(turn, sandbox, selection, n=3, turns=3, searches=4)
    assert finished["turn"].max() == turn and finished.height == 2 * 4 * turn
    engine = ScriptedEngine()
    resumed = run_search(problems_frame(), engine, sandbox, None, finished_rows=finished, **settings)
    # Same rows in the same order: the RNG draws of the finished turns were replayed (random
    # picks differ otherwise) and the conversations rebuilt (the script answers by turn).
    assert resumed.equals(whole)
    assert len(engine.calls) == 3 - turn
    first_conversations = engine.calls[0][0]
    assert all(len(conversation) == 1 + 2 * turn for conversation in first_conversations)
    assert first_conversations[0][2]["content"].startswith("Feedback: ")


def test_a_search_whose_turns_all_finished_generates_nothing(sandbox):
    finished = interrupted_after(2, sandbox, "pt", n=2, turns=2, searches=1)
    engine = ScriptedEngine()
    rows = run_search(problems_frame(), engine, sandbox, None, n=2, turns=2, searches=1, selection="pt",
                      sampling=SamplingParams(), seed=3, finished_rows=finished)
    assert engine.calls == [] and rows.equals(finished)


def test_finished_rows_that_do_not_fit_the_run_are_refused(sandbox):
    from mucode.best_of_n import finished_turns

    finished = interrupted_after(2, sandbox, "pt", n=2, turns=3, searches=2)
    searches = {(task, s) for task in ("add", "neg") for s in range(2)}
    assert finished_turns(finished, searches, n=2, turns=3, selection="pt") == 2
    cases = {
        "cover 4 searches, this run has 6": (finished, searches | {("add", 2), ("neg", 2)}, 2, "pt"),
        "have n [2], not 4": (finished, searches, 4, "pt"),
        "have selection ['pt'], not random": (finished, searches, 2, "random"),
        "do not hold turns 1..2": (finished.filter(~((pl.col("turn") == 1) & (pl.col("task_id") == "add"))),
                                   searches, 2, "pt"),
        "another schema": (finished.drop("public_feedback"), searches, 2, "pt"),
    }
    for message, (rows, expected, n, selection) in cases.items():
        with pytest.raises(EvaluationError, match=re.escape(message)):
            finished_turns(rows, expected, n=n, turns=3, selection=selection)
    with pytest.raises(EvaluationError, match=re.escape("turns 1..2 of every search (T=1)")):
        finished_turns(finished, searches, n=2, turns=1, selection="pt")


def scripted_stage(monkeypatch, engine: ScriptedEngine) -> None:
    """The evaluate stage with `engine` in place of the configured model (the real local sandbox)."""
    from types import SimpleNamespace

    import mucode.stage_resources as resources

    monkeypatch.setattr(resources, "generator_model", lambda cfg, store, model: SimpleNamespace(path="scripted"))
    monkeypatch.setattr(resources, "make_engine_from_config", lambda cfg, model: engine)


def test_a_killed_evaluate_stage_resumes_at_its_last_finished_turn(tmp_path, monkeypatch, capsys):
    import mucode.tasks.evaluate as evaluate
    from mucode.artifacts import ArtifactStore

    cfg = tiny_config(n=2, turns=3, searches=2)
    arguments = dict(generator=None, verifier=None, selection="pt", n=2, label="base")

    def stage(root: Path, engine: ScriptedEngine):
        scripted_stage(monkeypatch, engine)
        problems = ArtifactStore(root).put_frame(problems_frame(), stage="problems")
        return evaluate.evaluate_stage(cfg, str(root), problems=problems, **arguments)

    whole = ArtifactStore(tmp_path / "whole").get_frame(stage(tmp_path / "whole", ScriptedEngine()))
    real_save = evaluate.save_checkpoint

    def save_then_die(path, rows):
        real_save(path, rows)
        if rows["turn"].max() == 2:
            raise Interrupted

    monkeypatch.setattr(evaluate, "save_checkpoint", save_then_die)
    with pytest.raises(Interrupted):
        stage(tmp_path / "run", ScriptedEngine())
    (checkpoint,) = (tmp_path / "run" / "checkpoints" / "evaluate-base" / "mbpp").glob(".turns-n2-*.parquet")
    assert set(pl.read_parquet(checkpoint)["turn"]) == {1, 2}

    monkeypatch.setattr(evaluate, "save_checkpoint", real_save)
    capsys.readouterr()
    engine = ScriptedEngine()
    resumed = stage(tmp_path / "run", engine)
    assert f"resuming from {checkpoint}: 2 of 3 turns finished" in capsys.readouterr().err
    assert len(engine.calls) == 1  # turn 3 only
    store = ArtifactStore(tmp_path / "run")
    assert store.get_frame(resumed).equals(whole)
    assert store.manifest(resumed)["evaluation"]["details"]["resumed_after_turn"] == 2
    assert not checkpoint.exists()  # the rows are stored: nothing is left to resume
    assert not (tmp_path / "run" / "checkpoints").exists()  # nor an empty folder


def test_evaluations_differing_only_in_selection_generate_their_shared_first_turn_once(tmp_path, monkeypatch):
    import mucode.tasks.evaluate as evaluate
    from mucode.artifacts import ArtifactStore

    cfg = tiny_config(n=2, turns=3, searches=2)
    store = ArtifactStore(tmp_path)
    problems = store.put_frame(problems_frame(), stage="problems")
    made = {}
    for selection in ("random", "pt"):
        made[selection] = engine = ScriptedEngine()
        scripted_stage(monkeypatch, engine)
        made[selection, "rows"] = store.get_frame(evaluate.evaluate_stage(
            cfg, str(tmp_path), problems=problems, generator=None, verifier=None, selection=selection, n=2,
            label=f"base-{selection}"))
    first_turn = [call for call in made["random"].calls if all(len(c) == 1 for c in call[0])]
    assert first_turn and not [call for call in made["pt"].calls if all(len(c) == 1 for c in call[0])]
    # The same candidates, selected differently: each search sees as many public passes.
    columns = ["task_id", "search_id", "num_public_passing_candidates"]
    assert (made["pt", "rows"].filter(pl.col("turn") == 1).select(columns)
            .equals(made["random", "rows"].filter(pl.col("turn") == 1).select(columns)))
    manifests = {m["evaluation"]["method"]: m for m in store.list() if "evaluation" in m}
    assert manifests["base-pt"]["evaluation"]["details"]["reused_generate_calls"] == len(first_turn)
    assert manifests["base-random"]["evaluation"]["details"]["reused_generate_calls"] == 0


def test_the_evaluate_command_runs_the_stages_into_its_out_directory(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from mucode.cli import app

    scripted_stage(monkeypatch, ScriptedEngine())
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["evaluate", "--config", str(tiny_config_file(tmp_path)), "--generator", "g",
                                      "--dataset", "humaneval", "--limit", "2", "--scaling-n", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    evaluations = stored_evaluations(out)
    assert sorted(evaluations) == [1, 2]
    rows, manifest = evaluations[2]
    assert rows.height == 2 * 1 * 2 and manifest["evaluation"]["method"] == "g"
    lines = result.output.strip().splitlines()
    assert f"bon@2: {manifest['metrics']['bon@2']:.4f}" in lines
    assert lines[-1] == f"report: {out / 'report.md'}"


def test_checkpoint_files_round_trip_and_stale_or_torn_ones_are_dropped(tmp_path, capsys):
    from mucode.eval_checkpoint import (
        checkpoint_key,
        checkpoint_path,
        load_checkpoint,
        remove_checkpoints,
        save_checkpoint,
    )

    key = checkpoint_key({"n": 2, "sampling": {"temperature": 0.7}, "generator": Path("/models/a")})
    assert key == checkpoint_key({"generator": Path("/models/a"), "sampling": {"temperature": 0.7}, "n": 2})
    assert key != checkpoint_key({"n": 2, "sampling": {"temperature": 0.8}, "generator": Path("/models/a")})
    rows = frame(search_rows("a", 0, [False, True], [False, True]))
    path = checkpoint_path(tmp_path, 2, key)
    assert load_checkpoint(path) is None
    save_checkpoint(path, rows)
    assert load_checkpoint(path).equals(rows)
    stale = checkpoint_path(tmp_path, 2, "0" * 16)
    other_n = checkpoint_path(tmp_path, 4, "1" * 16)
    for extra in (stale, other_n):
        save_checkpoint(extra, rows)
    assert remove_checkpoints(tmp_path, 2, keep=path) == [stale]
    assert path.is_file() and other_n.is_file() and not stale.exists()
    path.write_bytes(path.read_bytes()[:40])  # torn: a crash mid-copy on a filesystem without atomic rename
    assert load_checkpoint(path) is None
    assert "is unreadable" in capsys.readouterr().err


def test_a_retrained_model_at_the_same_path_gets_another_checkpoint_key(tmp_path):
    from mucode.eval_checkpoint import checkpoint_key, files_fingerprint

    model = tmp_path / "generator"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"x" * 10)
    before = checkpoint_key({"generator": files_fingerprint(model)})
    assert before == checkpoint_key({"generator": files_fingerprint(model)})
    (model / "model.safetensors").write_bytes(b"y" * 11)
    assert checkpoint_key({"generator": files_fingerprint(model)}) != before
    assert files_fingerprint("org/hub-model") == "org/hub-model"


# --- end to end on CPU: the bundled model, real HumanEval problems ---------------------------------

BUNDLED = "bundled:smollm2-135m-instruct"


@pytest.fixture(scope="module")
def untrained_verifier(tmp_path_factory) -> str:
    """A verifier directory with an untrained one-logit head on the bundled model: enough to
    exercise the lv / pt+lv code paths, not to rank answers well."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from mucode.models import resolve_model

    base = resolve_model(BUNDLED)
    out = tmp_path_factory.mktemp("verifier")
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


def tiny_raw_config(**evaluation) -> dict:
    return {
        "engine": {"kind": "hf", "batch_size": 8},
        "sandbox": {"backend": "local", "workers": 2, "timeout_s": 5.0},
        "verifier": {"batch_size": 8, "max_length": 512},
        "evaluation": {"n": 2, "turns": 2, "searches": 1, "selection": "pt",
                       "sampling": {"temperature": 0.7, "top_p": 1.0, "max_new_tokens": 64}, **evaluation},
    }


def tiny_config(**evaluation):
    from mucode.config import parse_config

    return parse_config(tiny_raw_config(**evaluation))


def tiny_config_file(directory: Path) -> Path:
    import yaml

    path = directory / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_raw_config()))
    return path


def evaluate_command(config: Path, **options):
    """`mucode evaluate` as the command runs it (its options' defaults, then `options`)."""
    from mucode.cli import _evaluate

    settings = dict(generator=BUNDLED, dataset="humaneval", out=None, verifier=None, selection=None, n=None,
                    turns=None, searches=None, limit=None, scaling_ns=[], temperature=None, method=None)
    return _evaluate(config, **{**settings, **options})


def stored_evaluations(out: Path) -> dict[int, tuple[pl.DataFrame, dict]]:
    """N -> (rows, manifest) of every evaluate artifact under `out`."""
    from mucode.artifacts import ArtifactStore

    return {manifest["evaluation"]["n"]: (pl.read_parquet(manifest["path"]), manifest)
            for manifest in ArtifactStore(out).list() if "evaluation" in manifest}


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


@pytest.mark.slow
def test_every_selection_rule_end_to_end_with_the_bundled_model(tmp_path, untrained_verifier):
    from mucode.data import load_problems
    from mucode.engines import make_engine
    from mucode.models import resolve_model
    from mucode.artifacts import ArtifactStore
    from mucode.report import build_report
    from mucode.sandbox import make_sandbox
    from mucode.verifier_scorer import VerifierScorer

    problems = load_problems("humaneval", "test", limit=2)
    scorer = VerifierScorer(untrained_verifier, batch_size=8, max_length=512)
    sampling = SamplingParams(temperature=0.7, max_new_tokens=64, seed=0)
    with make_engine("hf", resolve_model(BUNDLED), batch_size=8) as engine, \
            make_sandbox("local", workers=2, timeout_s=5.0) as real_sandbox:
        for rule in ("random", "lv", "pt", "pt+lv"):
            rows = run_search(problems, engine, real_sandbox, scorer if rule in ("lv", "pt+lv") else None,
                              n=2, turns=2, searches=1, selection=rule, sampling=sampling, seed=0)
            assert rows.height == 2 * 1 * 2 and set(rows["selection"]) == {rule}
            assert rows["response"].str.len_chars().min() > 0
            assert rows["selected"].is_between(0, 1).all()
            assert rows["num_public_passing_candidates"].is_between(0, 2).all()
            scores = rows["verifier_score"]
            assert (scores.is_finite().all() if rule in ("lv", "pt+lv") else scores.is_nan().all())
            summary = summarize(rows)
            assert summary["problems"] == 2 and summary["bon@2"] <= summary["solved@2"]
            for t in (1, 2):
                assert metrics_from_rows(rows, t) == pytest.approx({name: summary[name] for name in
                                                                    (f"bon@{t}", f"public@{t}", f"solved@{t}")})
            print(rule, {name: summary[name] for name in ("bon@2", "public@2", "solved@2")})
            meta = {"method": "SmolLM2-135M", "dataset": "humaneval", "n": 2, "selection": rule, "turns": 2,
                    "searches": 1}
            ArtifactStore(tmp_path).put_frame(rows, stage=f"evaluate-{rule}",
                                              extra={"evaluation": meta, "metrics": summary})
    text = build_report(tmp_path).read_text()
    for rule in ("random", "lv", "pt", "pt+lv"):
        assert f"SmolLM2-135M, N=2 ({rule}) on HumanEval" in text
    assert png_size(tmp_path / "bon_at_t.png") == (550, 440)


@pytest.mark.slow
def test_evaluate_command_stores_rows_summary_report_and_scaling(tmp_path, untrained_verifier):
    out = tmp_path / "out"
    returned, report_path = evaluate_command(
        tiny_config_file(tmp_path), verifier=untrained_verifier, selection="pt+lv", n=2, turns=2, searches=1,
        limit=2, scaling_ns=[1, 2], method="Multi-turn Instruct", out=out)
    evaluations = stored_evaluations(out)
    rows, manifest = evaluations[2]
    assert rows.height == 2 * 2 and set(rows["n"]) == {2}
    summary = manifest["metrics"]
    assert summary == pytest.approx(returned) and summary["n"] == 2
    assert {"bon@1", "bon@2", "pass@1", "single_turn_pass@1", "bon@2.ci_low"} <= set(summary)
    assert evaluations[1][0]["n"].unique().to_list() == [1]
    assert sorted(evaluations) == [1, 2]  # the main run is N=2 already: no second N=2 run
    report_dir = Path(report_path).parent
    report = Path(report_path).read_text()
    assert "| Multi-turn Instruct | 1 | 2 |" in report and "| + BoN (pt+lv) | 2 | 2 |" in report
    for image in ("bon_at_t.png", "scaling.png"):
        width, height = png_size(report_dir / image)
        assert (width, height) == (550, 440) and (report_dir / image).stat().st_size > 10_000


@pytest.mark.slow
def test_the_evaluate_command_resumes_an_interrupted_run_at_its_last_finished_turn(tmp_path, monkeypatch, capsys):
    import mucode.tasks.evaluate as evaluate

    out = tmp_path / "out"
    real_save = evaluate.save_checkpoint

    def save_then_die(path, rows):
        real_save(path, rows)
        raise Interrupted

    settings = dict(selection="pt", n=2, turns=2, searches=1, limit=2, method="Multi-turn Instruct", out=out)
    monkeypatch.setattr(evaluate, "save_checkpoint", save_then_die)
    with pytest.raises(Interrupted):
        evaluate_command(tiny_config_file(tmp_path), **settings)
    (checkpoint,) = (out / "checkpoints").glob("evaluate-*/humaneval/.turns-n2-*.parquet")
    turn1 = pl.read_parquet(checkpoint)
    assert set(turn1["turn"]) == {1} and stored_evaluations(out) == {}

    monkeypatch.setattr(evaluate, "save_checkpoint", real_save)
    capsys.readouterr()
    evaluate_command(tiny_config_file(tmp_path), **settings)
    err = capsys.readouterr().err
    assert f"resuming from {checkpoint}: 1 of 2 turns finished" in err
    assert "turn 1/2" not in err and "turn 2/2" in err  # turn 1 was not generated again
    rows, manifest = stored_evaluations(out)[2]
    assert rows.filter(pl.col("turn") == 1).equals(turn1) and rows.height == 2 * 2
    assert manifest["evaluation"]["details"]["resumed_after_turn"] == 1
    assert list((out / "checkpoints").rglob(".turns-*")) == []  # the checkpoint goes once the evaluation is stored


def test_the_evaluate_command_needs_a_verifier_for_lv_before_loading_anything(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(EvaluationError) as error:
        evaluate_command(tiny_config_file(tmp_path), generator="does-not-exist/anywhere", selection="pt+lv", out=out)
    assert str(error.value) == "selection pt+lv needs --verifier; use pt for a base model"
    assert not out.exists()


# --- stopping a search at its submission ----------------------------------------------------------


def test_stopping_at_the_first_public_pass_keeps_bon_and_generates_less(sandbox):
    settings = dict(n=2, turns=3, searches=2, selection="pt", sampling=SamplingParams(max_new_tokens=16), seed=3)
    every, stopping = ScriptedEngine(), ScriptedEngine()
    whole = run_search(problems_frame(), every, sandbox, None, **settings)
    stopped = run_search(problems_frame(), stopping, sandbox, None, stop_at_public_pass=True, **settings)
    assert stopped.height == whole.height  # every search still has T turns
    whole_summary, stopped_summary = summarize(whole, seed=3), summarize(stopped, seed=3)
    for t in (1, 2, 3):
        assert stopped_summary[f"bon@{t}"] == whole_summary[f"bon@{t}"]
        assert stopped_summary[f"public@{t}"] == whole_summary[f"public@{t}"]
    # add passes publicly at turn 1 (pt picks the hard-coded answer, public only) and neg at turn 2
    # (the right answer): 2 problems x 2 searches x N=2 at turn 1, neg's 2 x 2 at turn 2, nothing at turn 3.
    generated = [sum(len(conversations) * n for conversations, n in engine.calls) for engine in (every, stopping)]
    assert generated == [2 * 2 * 2 * 3, 2 * 2 * 2 + 2 * 2]
    add = stopped.filter(pl.col("task_id") == "add").sort("search_id", "turn")
    assert add["selected"].to_list() == [1, -1, -1, 1, -1, -1]
    assert add.filter(pl.col("search_id") == 0)["response"].to_list() == [HARDCODED_ADD] * 3  # the submission
    neg = stopped.filter(pl.col("task_id") == "neg").sort("search_id", "turn")
    assert neg["selected"].to_list() == [neg["selected"][0], 1, -1, neg["selected"][3], 1, -1]
    # What the model wrote after a public pass no longer counts: add's later right answer is gone from solved@3.
    assert whole_summary["solved@3"] == 1.0 and stopped_summary["solved@3"] == 0.5


@pytest.mark.parametrize("turn", [1, 2])
def test_a_resumed_stopping_search_makes_the_rows_of_an_uninterrupted_one(sandbox, turn):
    settings = dict(n=2, turns=3, searches=2, selection="pt", sampling=SamplingParams(max_new_tokens=16), seed=3,
                    stop_at_public_pass=True)
    whole = run_search(problems_frame(), ScriptedEngine(), sandbox, None, **settings)
    finished = interrupted_after(turn, sandbox, "pt", n=2, turns=3, searches=2, stop_at_public_pass=True)
    engine = ScriptedEngine()
    resumed = run_search(problems_frame(), engine, sandbox, None, finished_rows=finished, **settings)
    assert resumed.sort("task_id", "search_id", "turn").equals(whole.sort("task_id", "search_id", "turn"))
    # The stopped searches (add) are not generated again; only neg's are.
    assert all("neg(x)" in conversation[0]["content"] for conversations, _ in engine.calls
               for conversation in conversations)


class RecordingEngine(Engine):
    """The real engine, recording the conversations it is asked to continue."""

    def __init__(self, engine):
        self.engine, self.conversations = engine, []

    @property
    def tokens_generated(self):
        return self.engine.tokens_generated

    def generate(self, conversations, n, sampling, **options):
        self.conversations.extend(conversations)
        return self.engine.generate(conversations, n, sampling, **options)

    def close(self):
        self.engine.close()


class RecordingScorer:
    """The real verifier, recording the prompts it scores."""

    def __init__(self, scorer):
        self.scorer, self.prompts = scorer, []

    def score(self, prompts, answers):
        self.prompts.extend(prompts)
        return self.scorer.score(prompts, answers)


def codecontests_problems(tmp_path: Path) -> pl.DataFrame:
    """One stdin/stdout problem shaped like a `deepmind/code_contests` row, read by the real loader."""
    from mucode.data import load_problems

    row = {"name": "1_A. Sum", "description": "Read two integers a and b and print a + b.\n",
           "public_tests": {"input": ["1 2\n"], "output": ["3\n"]},
           "private_tests": {"input": ["10 20\n"], "output": ["30\n"]},
           "generated_tests": {"input": [], "output": []},
           "solutions": {"language": [3], "solution": ["a, b = map(int, input().split())\nprint(a + b)\n"]}}
    (tmp_path / "codecontests-test.jsonl").write_text(json.dumps(row) + "\n")
    return load_problems("codecontests", "test", data_dir=tmp_path)


@pytest.mark.slow
def test_codecontests_search_prompts_engine_and_verifier_with_the_stdio_message(tmp_path, untrained_verifier):
    from mucode.engines import make_engine
    from mucode.models import resolve_model
    from mucode.prompts import STDIO_FIRST_MESSAGE_TEMPLATE
    from mucode.sandbox import make_sandbox
    from mucode.verifier_scorer import VerifierScorer

    problems = codecontests_problems(tmp_path)
    problem = problems.row(0, named=True)
    expected = first_user_message(problem["prompt"], problem["public_tests"], "codecontests")
    assert expected.startswith(STDIO_FIRST_MESSAGE_TEMPLATE.split("{")[0])
    scorer = RecordingScorer(VerifierScorer(untrained_verifier, batch_size=4, max_length=512))
    with RecordingEngine(make_engine("hf", resolve_model(BUNDLED), batch_size=4)) as engine, \
            make_sandbox("local", workers=1, timeout_s=5.0) as real_sandbox:
        rows = run_search(problems, engine, real_sandbox, scorer, n=2, turns=2, searches=1, selection="pt+lv",
                          sampling=SamplingParams(temperature=0.7, max_new_tokens=24, seed=0), seed=0)
    assert rows.height == 2 and set(rows["dataset"]) == {"codecontests"}
    assert len(engine.conversations) == 2  # one search, two turns
    assert all(conversation[0] == {"role": "user", "content": expected} for conversation in engine.conversations)
    assert "standard input" in expected and "Python function implementation" not in expected
    assert scorer.prompts and set(scorer.prompts) == {expected}


class IndependentScriptedEngine(ScriptedEngine):
    """ScriptedEngine's replies depend on nothing but the conversation and sample index;
    this one also records which (conversation, seed stream) pairs it generated."""

    independent_draws = True

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[tuple[str, str]] = []

    def generate(self, conversations, n, sampling, streams=None):
        self.asked += [(json.dumps(conversation), stream) for conversation, stream in zip(conversations, streams)]
        return super().generate(conversations, n, sampling, streams)


def test_selections_share_every_search_whose_history_agrees_with_an_engine_of_independent_draws(tmp_path,
                                                                                               monkeypatch):
    """random then pt: 'neg' fails its public test on turn 1 with both candidates, so both
    rules pick alike and their turn-2 conversations are the same; pt generates none of them
    again, only what random never asked, and its rows are those of a run without the memo."""
    import mucode.tasks.evaluate as evaluate
    from mucode.artifacts import ArtifactStore

    cfg = tiny_config(n=2, turns=3, searches=2)
    store = ArtifactStore(tmp_path / "shared")
    problems = store.put_frame(problems_frame(), stage="problems")
    asked = {}
    for selection in ("random", "pt"):
        asked[selection] = engine = IndependentScriptedEngine()
        scripted_stage(monkeypatch, engine)
        made = evaluate.evaluate_stage(cfg, str(tmp_path / "shared"), problems=problems, generator=None,
                                       verifier=None, selection=selection, n=2, label=f"base-{selection}")
    assert asked["pt"].asked and not set(asked["pt"].asked) & set(asked["random"].asked)
    details = store.manifest(made)["evaluation"]["details"]
    later_turns_reused = details["reused_conversations"] - len(problems_frame()) * 2  # beyond turn 1's 4
    assert later_turns_reused >= 2, details  # neg's two searches at turn 2
    alone = ArtifactStore(tmp_path / "alone")
    scripted_stage(monkeypatch, ScriptedEngine())
    unshared = evaluate.evaluate_stage(cfg, str(tmp_path / "alone"), problems=alone.put_frame(problems_frame(),
                                       stage="problems"), generator=None, verifier=None, selection="pt", n=2,
                                       label="base-pt")
    assert store.get_frame(made).equals(alone.get_frame(unshared))
