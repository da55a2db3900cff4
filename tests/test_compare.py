"""mucode-compare: paired differences, the evaluation plan, the GPU plan, the compare report, the flow."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mucode.artifacts import ArtifactStore
from mucode.compare import (
    ABLATION_FILE, ARM_CURVES_FILE, COMPARE_FILE, CompareError, Difference, method_title, paired_difference,
    per_problem_bon, stage_cost_table)
from mucode.config import load_config
from mucode.flows.compare import arm_config, compare_plan, evaluation_plan
from mucode.flows.experiment import IterationRecord, read_iterations
from mucode.orchestration import TIMINGS_FILE, read_timings, record_timing
from mucode.tasks.compare import compare_stage
from mucode.eval_summary import summarize
from report_support import png_size, rows_for

REPO = Path(__file__).resolve().parents[1]
CPU_CONFIG, GPU_CONFIG = REPO / "configs" / "compare-cpu.yaml", REPO / "configs" / "compare-paper-1b.yaml"


def test_per_problem_bon_is_the_first_public_pass_judged_privately():
    rows = rows_for("mbpp", 5, 3, {"a": 1, "b": 3, "c": None})
    assert per_problem_bon(rows, 3) == {"a": 1.0, "b": 1.0, "c": 0.0}
    assert per_problem_bon(rows, 2) == {"a": 1.0, "b": 0.0, "c": 0.0}
    with pytest.raises(CompareError, match="fewer than the 4"):
        per_problem_bon(rows, 4)


def test_paired_difference_uses_only_shared_problems_and_brackets_the_mean():
    ours = {"a": 1.0, "b": 1.0, "c": 0.0, "d": 1.0}
    theirs = {"a": 0.0, "b": 1.0, "c": 0.0, "e": 1.0}  # e is not shared; d is not either
    value, low, high, problems = paired_difference(ours, theirs, resamples=2000)
    assert problems == 3
    assert value == pytest.approx(1 / 3)
    assert 0.0 <= low <= value <= high <= 1.0
    assert paired_difference(ours, ours)[:3] == (0.0, 0.0, 0.0)
    with pytest.raises(CompareError, match="share no problem"):
        paired_difference({"a": 1.0}, {"b": 1.0})


def test_difference_verdict_reads_the_interval_not_the_point():
    assert Difference("mucode", "rft", "mbpp", 0.2, 0.05, 0.35, 40).verdict == "higher"
    assert Difference("mucode", "rft", "mbpp", -0.2, -0.35, -0.05, 40).verdict == "lower"
    assert Difference("mucode", "rft", "mbpp", 0.2, -0.05, 0.45, 40).verdict == "not distinguishable"


def test_evaluation_plan_covers_table1_and_the_ablation():
    cfg = load_config(CPU_CONFIG)
    plan = evaluation_plan(cfg)
    methods = ["base", *cfg.compare.arms]
    n = cfg.evaluation.n
    full = [item for item in plan if item.turns == cfg.evaluation.turns]
    assert [(item.method, item.n) for item in full if item.n == 1] == [(method, 1) for method in methods]
    assert {item.method for item in plan if item.n == n and item.selection == cfg.evaluation.selection} == set(methods)
    ablation = {item.selection for item in plan if item.method == "mucode" and item.n == n}
    assert ablation == set(cfg.compare.ablation_selections) | {cfg.evaluation.selection}
    assert len(plan) == len({(item.method, item.n, item.selection) for item in plan})  # nothing twice
    assert not any(item.uses_verifier for item in plan if item.n == 1)
    single = evaluation_plan(load_config(CPU_CONFIG, ["evaluation.n=1"]))
    assert all(item.n == 1 for item in single) and len(single) == len(methods) + 1  # + the base model at T=1


def test_arms_share_every_stage_before_relabel():
    cfg = load_config(CPU_CONFIG)
    mucode, rft = arm_config(cfg, "mucode"), arm_config(cfg, "rft")
    assert rft.relabel.policy == "rft" and mucode.relabel.policy == "mucode"
    from mucode import tasks

    for stage in ("problems", "rollout", "execute", "aggregate", "verifier", "evaluate"):
        sections = tasks.stage_task(stage).cache_policy.sections
        assert mucode.section_digest(*sections) == rft.section_digest(*sections), stage
    relabel_sections = tasks.stage_task("relabel").cache_policy.sections
    assert mucode.section_digest(*relabel_sections) != rft.section_digest(*relabel_sections)


def test_paper_config_is_planned_up_to_the_gpu():
    cfg = load_config(GPU_CONFIG)
    assert (cfg.compute.num_gpus, cfg.engine.kind, cfg.iterations) == (4, "sglang", 2)
    plan = compare_plan(cfg)
    assert set(plan["stages"]) >= {"rollout", "verifier", "relabel", "finetune", "evaluate", "compare"}
    for stage in ("verifier", "finetune"):
        command = plan["gpu"][stage]
        assert command[:2] == ["accelerate", "launch"]
        assert command[command.index("--num_processes") + 1] == "4"
        assert Path(command[command.index("--config_file") + 1]).is_file()  # the DeepSpeed ZeRO-3 accelerate file
        assert command[command.index("-m") + 1] == f"mucode.tasks.{stage}"
        sections = json.loads(command[command.index("--config-json") + 1])
        assert sections[stage]["learning_rate"] == getattr(cfg, stage).learning_rate
    engine = plan["gpu"]["sglang_engine"]
    assert (engine["dp_size"], engine["dtype"], engine["model_path"]) == (4, "bfloat16", "meta-llama/Llama-3.2-1B-Instruct")
    assert "gpu" not in compare_plan(load_config(CPU_CONFIG))


def test_timings_are_appended_and_a_torn_line_is_skipped(tmp_path):
    record_timing(str(tmp_path), "rollout", "rollout-1", 12.5)
    record_timing(str(tmp_path), "finetune", "finetune", 30.25, peak_bytes=3 * 2**30 + 2**28, unfinished_s=20.0)
    with open(tmp_path / TIMINGS_FILE, "a") as timings:
        timings.write('{"stage": "verif')  # a crash mid-write
    records = read_timings(str(tmp_path))
    assert [(r["stage"], r["wall_s"], r["unfinished_s"], r["peak_rss_gib"]) for r in records] == [
        ("rollout", 12.5, 0.0, None), ("finetune", 30.25, 20.0, 3.25)]
    table = stage_cost_table(records)
    # A run's time includes its unfinished earlier attempts, also shown apart.
    assert "| rollout | 1 | 12 | 0 | 12 | n/a |" in table and "| finetune | 1 | 50 | 20 | 50 | 3.25 |" in table
    assert "**63**" in table and table.rstrip().endswith("| 20 |  | 3.25 |")
    # Records written before unfinished attempts were kept count their own time only.
    assert "| rollout | 1 | 12 | 0 | 12 | n/a |" in stage_cost_table([{"stage": "rollout", "wall_s": 12.0}])


def test_iteration_record_without_generator_round_trips():
    store_ref = {"path": "p", "hash": "h", "kind": "frame", "stage": "relabel", "rows": 0}
    raw = {"iteration": 1, "problems": store_ref, "aggregated": store_ref, "verifier": store_ref, "sft": store_ref,
           "generator": None}
    record = IterationRecord.from_json(raw)
    assert record.generator is None
    assert IterationRecord.from_json(record.to_json()) == record


def _store_evaluation(store: ArtifactStore, method: str, dataset: str, n: int, selection: str, solved: dict):
    rows = rows_for(dataset, n, 3, solved, selection)
    meta = {"method": method, "dataset": dataset, "n": n, "selection": selection, "turns": 3, "searches": 1,
            "details": {"generator": method}}
    return store.put_frame(rows, stage=f"evaluate-{method}", extra={"evaluation": meta, "metrics": summarize(rows)})


def test_compare_stage_writes_the_report_from_artifacts(tmp_path):
    cfg = load_config(CPU_CONFIG, {"run_dir": str(tmp_path)})
    root = str(tmp_path / cfg.name)
    store = ArtifactStore(root)
    problems = [f"p{i}" for i in range(12)]
    strong = {task: 1 for task in problems}  # every problem at turn 1
    weak = {task: (2 if i < 4 else None) for i, task in enumerate(problems)}
    n, selection = cfg.evaluation.n, cfg.evaluation.selection
    evaluations = [_store_evaluation(store, "base", "mbpp", n, selection, weak),
                   _store_evaluation(store, "mucode", "mbpp", n, selection, strong),
                   _store_evaluation(store, "rft", "mbpp", n, selection, weak),
                   _store_evaluation(store, "mucode", "mbpp", n, "random", weak)]
    record_timing(root, "rollout", "rollout-1", 61.0)
    path = Path(compare_stage(cfg, root, evaluations, phases={"train mucode": 100.0}))
    assert path.name == COMPARE_FILE and path.is_file()
    text = path.read_text()
    # µCode solves 12/12, RFT and base 4/12 on the same problems: +66.7 points, interval above 0.
    assert "| MBPP | 5 | µCode − Multi-turn Instruct (base) | +66.7 |" in text
    assert "| MBPP | 5 | µCode − Multi-turn RFT (Multi-STaR) | +66.7 |" in text
    assert "higher" in text and "| rollout | 1 | 61 |" in text and "| train mucode | 100 |" in text
    assert f"name: {cfg.name}" in text  # the configuration is in the report
    answers = text.split("## First-turn answers")[1].split("## BoN@t")[0]
    assert "| MBPP | 5 | pt+lv | µCode | 100.0 | 100.0 |" in answers  # every problem passes at turn 1
    for image in (ARM_CURVES_FILE, ABLATION_FILE):
        width, height = png_size(path.parent / image)
        assert width > 100 and height > 100
    assert (path.parent / "report.md").is_file()


def test_the_report_of_a_run_in_an_object_store_is_written_into_the_store(tmp_path, monkeypatch):
    import fsspec

    monkeypatch.chdir(tmp_path)  # where a report written to the store's bare path would land
    cfg = load_config(CPU_CONFIG, {"run_dir": f"memory://{tmp_path.name}"})
    root = f"memory://{tmp_path.name}/{cfg.name}"
    store = ArtifactStore(root)
    base = _store_evaluation(store, "base", "mbpp", 1, "random", {f"p{i}": (1 if i < 3 else None) for i in range(6)})
    record_timing(root, "rollout", "rollout-1", 61.0)
    url = compare_stage(cfg, root, [base], phases={})
    filesystem, path = fsspec.core.url_to_fs(url)
    assert url.startswith("memory://") and path.endswith(f"/report/{COMPARE_FILE}")
    text = filesystem.cat_file(path).decode()
    assert "| Multi-turn Instruct (base) | 1 |" in text and "| rollout | 1 | 61 |" in text
    assert filesystem.isfile(path.replace(COMPARE_FILE, ARM_CURVES_FILE))
    assert list(tmp_path.iterdir()) == []


def test_a_run_in_progress_gets_a_report_of_its_first_rows(tmp_path):
    """The flow rewrites the report after each evaluation: the first is the base model's N=1 row alone."""
    cfg = load_config(CPU_CONFIG, {"run_dir": str(tmp_path)})
    root = str(tmp_path / cfg.name)
    store = ArtifactStore(root)
    base = _store_evaluation(store, "base", "mbpp", 1, "random", {f"p{i}": (1 if i < 3 else None) for i in range(6)})
    path = Path(compare_stage(cfg, root, [base], phases={}))
    text = path.read_text()
    assert "| Multi-turn Instruct (base) | 1 |" in text and "50.0" in text
    assert "_(no pair of methods was evaluated alike)_" in text
    width, _ = png_size(path.parent / ARM_CURVES_FILE)  # the N=1 rows stand in for the N=n curves
    assert width > 100


@pytest.mark.slow
def test_compare_flow_runs_every_arm_from_shared_base_rollouts(prefect_harness, tmp_path, data_dir):
    """The real flow on tiny settings: four arms, one shared rollout stage, a report with the single-turn rows."""
    from mucode.flows.compare import mucode_compare

    overrides = [f"run_dir={tmp_path}", f"data.data_dir={data_dir}", "data.train_limit=2", "data.eval_limit=1",
                 "data.eval_datasets=[humaneval]", "rollout.num_rollouts=2", "rollout.max_turns=1",
                 "rollout.sampling.max_new_tokens=24", "evaluation.sampling.max_new_tokens=24", "evaluation.turns=2",
                 "evaluation.n=2", "evaluation.searches=1", "compare.ablation_selections=[pt]",
                 "compare.arms=[mucode,rft,oracle,single-turn-rft]", "finetune.epochs=1", "verifier.epochs=1"]
    report = Path(mucode_compare(config=str(CPU_CONFIG), overrides=overrides))
    text = report.read_text()
    for method in ("Multi-turn Instruct (base)", "µCode", "Multi-turn RFT (Multi-STaR)", "Multi-STaR²",
                   "Single-turn Instruct (base)", "Single-turn RFT"):
        assert f"| {method}" in text
    assert "| Single-turn Instruct (base) | 1 | 1 |" in text  # N=1, T=1
    computed = [record["stage"] for record in read_timings(str(report.parents[1]))]
    assert computed.count("rollout") == 1  # iteration 1's rollouts ran once for four arms
    assert computed.count("relabel") == 4
    states = sorted(path.parent.name for path in report.parents[1].glob("arms/*/state.json"))
    assert states == ["mucode", "oracle", "rft", "single-turn-rft"]
    untrained = [arm for arm in ("rft", "oracle", "single-turn-rft")
                 if read_iterations(str(report.parents[1] / "arms" / arm))[-1].generator is None]
    for arm in untrained:
        assert "no training data" in next(line for line in text.splitlines()
                                          if line.startswith(f"| {method_title(arm)} — "))
    # An arm left at the base model is not searched again: it takes the base model's rows (N=1 and N=2 for a
    # multi-turn arm, T=1 for single-turn RFT), and the base model's T=1 row is the first turn of its N=1 search.
    multi_turn = len([arm for arm in untrained if arm != "single-turn-rft"])
    assert computed.count("evaluate-alias") == 2 * multi_turn + ("single-turn-rft" in untrained) + 1
    # The report is rewritten after every evaluation, computed or reused, so a long run shows its finished rows.
    assert computed.count("compare") == computed.count("evaluate") + computed.count("evaluate-alias")


def test_an_aliased_evaluation_keeps_the_rows_under_the_new_name(tmp_path):
    from mucode.tasks.evaluate import alias_evaluation_stage

    cfg = load_config(CPU_CONFIG, {"run_dir": str(tmp_path)})
    store = ArtifactStore(str(tmp_path / cfg.name))
    base = _store_evaluation(store, "base", "humaneval", 5, "pt+lv", {"a": 1, "b": None})
    alias = alias_evaluation_stage(cfg, store.base, base, label="rft")
    assert alias.path != base.path and store.get_frame(alias).equals(store.get_frame(base))
    meta = store.manifest(alias)["evaluation"]
    assert (meta["method"], meta["details"]["same_as"]) == ("rft", "base")
    assert store.manifest(base)["evaluation"]["method"] == "base"  # the original is untouched


def test_the_ablation_can_be_limited_to_some_datasets():
    cfg = load_config(CPU_CONFIG, {"compare": {"ablation_datasets": ["humaneval"]}})
    ablation = [item for item in evaluation_plan(cfg) if item.selection != cfg.evaluation.selection and item.n > 1]
    assert ablation and all(item.datasets == ("humaneval",) for item in ablation)
    table1 = [item for item in evaluation_plan(cfg) if item not in ablation]
    assert all(item.datasets is None for item in table1)


# -- Table 1 as the paper reports it (issue 18, item 6) ---------------------------------------

def _artifact(name: str, rows: int | None = None):
    from mucode.artifacts import Artifact

    return Artifact(hash=name, path=name, kind="dir", stage=name, rows=rows)


def _record(iteration: int, generator: str | None, verifier: str):
    return IterationRecord(iteration=iteration, problems=_artifact("problems"), aggregated=_artifact(f"agg{iteration}"),
                           verifier=_artifact(verifier), sft=_artifact(f"sft{iteration}", 10),
                           generator=_artifact(generator) if generator else None)


def test_every_iteration_of_every_arm_is_a_table1_row():
    cfg = load_config(CPU_CONFIG, {"iterations": 2})
    plan = evaluation_plan(cfg)
    for arm in cfg.compare.arms:
        for n in (1, cfg.evaluation.n):
            rows = {(item.method, item.iteration) for item in plan if item.arm == arm and item.n == n
                    and item.selection in ("random", cfg.evaluation.selection)}
            assert rows >= {(f"{arm}@iter1", 1), (arm, 2)}, (arm, n)
    # The ablation is of the last iteration only.
    assert {item.iteration for item in plan if item.selection in ("lv", "pt")} == {2}


def test_single_turn_rows_run_one_turn_and_the_base_row_reuses_the_first_turn():
    cfg = load_config(CPU_CONFIG, {"compare": {"arms": ["mucode", "rft", "single-turn-rft"]}})
    plan = evaluation_plan(cfg)
    single = [item for item in plan if item.turns == 1]
    assert [(item.method, item.n, item.reuses) for item in single] == [
        ("single-turn-base", 1, "base"), ("single-turn-rft", 1, "")]
    assert not [item for item in plan if item.arm == "single-turn-rft" and item.turns != 1]  # never multi-turn
    assert {item.turns for item in plan if item.turns != 1} == {cfg.evaluation.turns}


def test_the_first_turns_of_a_search_are_the_shorter_search(tmp_path):
    from mucode.tasks.evaluate import alias_evaluation_stage

    cfg = load_config(CPU_CONFIG, {"run_dir": str(tmp_path)})
    store = ArtifactStore(str(tmp_path / cfg.name))
    base = _store_evaluation(store, "base", "mbpp", 1, "random", {"a": 1, "b": 2, "c": None, "d": 1})
    single = alias_evaluation_stage(cfg, store.base, base, label="single-turn-base", turns=1)
    manifest = store.manifest(single)
    assert manifest["evaluation"]["turns"] == 1 and manifest["evaluation"]["details"]["first_turns_of"] == "base"
    assert "same_as" not in manifest["evaluation"]["details"]  # a result of its own, not a copy of base's row
    assert store.get_frame(single)["turn"].to_list() == [1, 1, 1, 1]
    assert manifest["metrics"]["bon@1"] == store.manifest(base)["metrics"]["bon@1"] == 0.5
    assert "bon@2" not in manifest["metrics"]


def test_strongest_baseline_is_the_best_n1_baseline_and_never_the_reference():
    from mucode.flows.compare import baseline_candidates, strongest_baseline

    cfg = load_config(CPU_CONFIG, {"iterations": 2})
    assert [item.method for item in baseline_candidates(cfg)] == ["base", "rft", "oracle"]
    n1 = {"base": [0.3, 0.5], "mucode": [0.9, 0.9], "rft": [0.4, 0.5], "oracle": [0.2, 0.2], "rft@iter1": [0.8, 0.8]}
    assert strongest_baseline(cfg, n1).method == "rft"
    assert strongest_baseline(cfg, {**n1, "rft": [0.3, 0.5]}).method == "base"  # a tie goes to the earlier


def test_mucode_train_evaluates_base_and_trained_generators_alike():
    from mucode.flows.evaluate import generators_to_evaluate

    cfg = load_config(REPO / "configs" / "smoke.yaml")
    records = [_record(1, "g1", "v1"), _record(2, "g2", "v2")]
    planned = generators_to_evaluate(cfg, records)
    assert [(p.label, p.generator and p.generator.hash, p.verifier.hash) for p in planned] == [
        ("mucode@iter1", "g1", "v1"), ("mucode", "g2", "v2"), ("base", None, "v1")]
    assert {p.selection for p in planned} == {cfg.evaluation.selection}  # one rule for every row
    # An iteration that trained nothing is the base model: evaluated once, as the base model.
    assert [p.label for p in generators_to_evaluate(cfg, [_record(1, None, "v1")])] == ["base"]
    # No iteration: no verifier, so the base model alone with pt.
    assert [(p.label, p.selection) for p in generators_to_evaluate(cfg, [])] == [("base", "pt")]


def test_compare_report_names_untrained_arms_and_reads_training_from_artifacts(tmp_path):
    import polars as pl

    from mucode.tasks.evaluate import alias_evaluation_stage

    cfg = load_config(CPU_CONFIG, {"run_dir": str(tmp_path)})
    root = str(tmp_path / cfg.name)
    store = ArtifactStore(root)
    problems = [f"p{i}" for i in range(10)]
    n, selection = cfg.evaluation.n, cfg.evaluation.selection

    def solving(first: int, last: int) -> dict:  # problems p<first>..p<last - 1> solved at turn 1
        return {task: (1 if first <= i < last else None) for i, task in enumerate(problems)}

    base = _store_evaluation(store, "base", "mbpp", n, selection, solving(0, 3))
    mucode = _store_evaluation(store, "mucode", "mbpp", n, selection, solving(0, 6))
    oracle = _store_evaluation(store, "oracle", "mbpp", n, selection, solving(2, 4))
    rft = alias_evaluation_stage(cfg, root, base, label="rft")  # rft had nothing to train on
    n1 = [_store_evaluation(store, "base", "mbpp", 1, "random", solving(0, 2)),
          _store_evaluation(store, "mucode", "mbpp", 1, "random", solving(0, 4))]
    aggregated = store.put_frame(pl.DataFrame({"task_id": ["p0", "p0", "p1", "p2"], "final": [False, True, True, True],
                                               "oracle_passed": [False, True, False, False], "iteration": [1] * 4}),
                                 stage="aggregate")
    verifier = store.put_frame(pl.DataFrame({"x": [1]}), stage="verifier", extra={"metrics": {"heldout_auc": 0.8125}})

    def sft(rows: int):
        frame = pl.DataFrame({"task_id": [f"p{i}" for i in range(rows)]})
        return store.put_frame(frame, stage=f"relabel-{rows}", extra={"metrics": {"examples": rows, "problems": rows,
                                                                               "target_pass_rate": 0.5}})

    training = {arm: [{"iteration": 1, "sft": sft(rows), "verifier": verifier, "aggregated": aggregated,
                       "generator": generator}]
                for arm, rows, generator in (("mucode", 7, verifier), ("rft", 0, None), ("oracle", 2, verifier))}
    text = Path(compare_stage(cfg, root, [*n1, base, mucode, rft, oracle], phases={}, training=training)).read_text()
    table1 = text.split("## Table 1 layout")[1].split("## Paired")[0]
    untrained = next(line for line in table1.splitlines() if line.startswith("| Multi-turn RFT"))
    assert "no training data" in untrained and "= Multi-turn Instruct (base)" in untrained
    assert "30.0" not in untrained  # the base model's number is not passed off as RFT's
    training_part = text.split("## Training data per arm")[1].split("## Table 1")[0]
    assert "| µCode | 1 | 33.3 | 7 | 7 | 50.0 | fine-tuned | 0.812 |" in training_part  # 1 of 3 finals passes
    assert "| Multi-turn RFT (Multi-STaR) | 1 | 33.3 | 0 |" in training_part
    assert "base model (no training data)" in training_part
    unique = text.split("## Problems only one method solves")[1].split("## BoN@t")[0]
    # µCode solves p0-p5, base p0-p2, Multi-STaR² p2-p3: only µCode has problems of its own (p4, p5).
    assert "| MBPP | 5 | pt+lv | µCode | 6 | 2 | 20.0 |" in unique
    assert "| MBPP | 5 | pt+lv | Multi-STaR² | 2 | 0 | 0.0 |" in unique
    assert "Multi-turn RFT" not in unique  # a reused evaluation is not a method of its own
    differences = text.split("## Paired differences")[1].split("## Problems only")[0]
    assert "| MBPP | 5 | µCode − Multi-turn Instruct (base) | +30.0 |" in differences and "| 3 / 0 |" in differences
    assert "µCode − Multi-turn RFT" not in differences  # RFT is the base model here: no second copy
    assert "| MBPP | 1 | µCode − Multi-turn Instruct (base) | +20.0 |" in differences  # N=1 compared too
    assert "one run per problem" in text.split("## Power")[1].split("## Problems only")[0]


def test_the_power_section_reads_the_base_rollouts_discordance():
    import polars as pl

    from mucode.compare import power_section, rollout_outcomes

    # Two problems, four rollouts each (two turns per rollout, the final one judged): p0 passes 2 of 4, p1 all 4.
    rows = [(task, rollout, turn, turn == 2, task == "p1" or rollout < 2)
            for task in ("p0", "p1") for rollout in range(4) for turn in (1, 2)]
    aggregated = pl.DataFrame(rows, schema=["task_id", "rollout_id", "turn", "final", "oracle_passed"], orient="row")
    aggregated = pl.concat([aggregated.with_columns(iteration=pl.lit(1)),
                            aggregated.with_columns(iteration=pl.lit(2), oracle_passed=pl.lit(False))])
    outcomes = rollout_outcomes(aggregated)
    assert outcomes == {"p0": [True, True, False, False], "p1": [True] * 4}  # iteration 2 left out
    text = power_section(outcomes, {"humaneval": 164})
    # (2/3 + 0) / 2 = 1/3 of problems disagree between two runs of the base model.
    assert "**33.3%**" in text and "the 2 training problems" in text
    from mucode.power import min_resolvable_difference
    assert f"| HumanEval | 164 | {100 * min_resolvable_difference(164, 1 / 3):.1f} |" in text


def test_iteration_titles_name_the_iteration():
    from mucode.compare import method_title

    assert method_title("mucode@iter1", 2) == "µCode (Iter 1)"
    assert method_title("mucode", 2) == "µCode (Iter 2)"
    assert method_title("mucode", 1) == "µCode"
    assert method_title("base", 2) == "Multi-turn Instruct (base)"
    assert method_title("single-turn-base", 2) == "Single-turn Instruct (base)"


# -- issue 17's configuration -------------------------------------------------------------------

QWEN_CONFIG = REPO / "configs" / "compare-cpu-qwen.yaml"


def test_qwen_config_plans_issue_17s_comparison(capsys):
    from mucode.flows.compare import main

    cfg = load_config(QWEN_CONFIG)
    assert cfg.model.name == "bundled:qwen2.5-coder-0.5b-instruct"
    assert (cfg.verifier.loss, cfg.evaluation.turns, cfg.evaluation.n) == ("bt", 3, 5)
    assert cfg.verifier.heldout_fraction > 0  # the report needs a held-out AUC
    # The fast CPU engine and LoRA for both trainers (issue 16).
    assert (cfg.engine.kind, cfg.finetune.method, cfg.verifier.method) == ("openvino", "lora", "lora")

    assert main(["--config", str(QWEN_CONFIG), "--plan", "--discordance", "0.15"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["arms"] == ["mucode", "rft", "oracle"]
    evaluations = plan["evaluations"]

    def methods(**match) -> set[str]:
        return {e["method"] for e in evaluations if all(e[key] == value for key, value in match.items())}

    # N = 1 at T = 3 on both datasets for the base model and every multi-turn arm; the single-turn rows at T = 1.
    assert methods(n=1, turns=3, datasets=None) == {"base", "mucode", "rft", "oracle"}
    assert methods(turns=1) == {"single-turn-base"}  # the base model's first turns, at no cost
    # N = 5 with PT+LV for µCode and the strongest baseline on HumanEval; the µCode selection ablation there too.
    assert methods(n=5, selection="pt+lv", datasets=["humaneval"]) == {"mucode", "strongest-baseline"}
    assert {e["selection"] for e in evaluations if e["method"] == "mucode" and e["n"] == 5} == {
        "random", "lv", "pt", "pt+lv"}
    assert {(row["dataset"], row["problems"]) for row in plan["power"]} == {("humaneval", 164), ("mbpp", 300)}
    assert {row["discordance"] for row in plan["power"]} == {0.15}
    cost = plan["cost"]
    assert cost["items"] and cost["total_hours"] > 0 and isinstance(cost["within_budget"], bool)
    assert [item["item"].split(",")[0] for item in cost["items"] if item["item"].startswith("finetune")] == [
        "finetune mucode", "finetune rft", "finetune oracle"]


def test_the_plan_measures_the_discordance_of_the_base_rollouts(tmp_path, capsys):
    import polars as pl

    from mucode.flows.compare import main

    # An execute frame: p0 passes in 1 of 2 rollouts (2*1*1/(2*1) = 1), p1 in both (0): 0.5 on average.
    rows = pl.DataFrame({"task_id": ["p0", "p0", "p0", "p1", "p1"], "rollout_id": [0, 0, 1, 0, 1],
                         "final": [False, True, True, True, True], "oracle_passed": [False, True, False, True, True]})
    rows.write_parquet(tmp_path / "execute.parquet")
    assert main(["--config", str(QWEN_CONFIG), "--plan", "--discordance-from", str(tmp_path / "execute.parquet")]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["measured_discordance"] == {"source": str(tmp_path / "execute.parquet"), "problems": 2, "share": 0.5}
    assert {row["discordance"] for row in plan["power"]} == {0.5, 0.1, 0.2, 0.3}
    # A frame without the outcomes, or a missing file: one line, exit code 2.
    pl.DataFrame({"task_id": ["p0"]}).write_parquet(tmp_path / "bare.parquet")
    assert main(["--config", str(QWEN_CONFIG), "--plan", "--discordance-from", str(tmp_path / "bare.parquet")]) == 2
    assert main(["--config", str(QWEN_CONFIG), "--plan", "--discordance-from", str(tmp_path / "none.parquet")]) == 2
    errors = capsys.readouterr().err
    assert "lacks columns ['final', 'oracle_passed']" in errors and "no rollout artifact" in errors


def test_first_answers_show_a_fine_tune_that_dropped_the_docstring_and_shortened_its_answers():
    import polars as pl

    from mucode.compare import first_answers
    from mucode.evaluations import EvaluationSummary, evaluation_summary

    def evaluation(method: str, solved: dict, code: str) -> tuple[EvaluationSummary, pl.DataFrame]:
        rows = rows_for("humaneval", 1, 3, solved, "random").with_columns(
            pl.lit(f"```python\n{code}\n```").alias("response"), pl.lit(code).alias("code"))
        meta = {"method": method, "dataset": "humaneval", "n": 1, "selection": "random", "turns": 3, "searches": 1}
        return evaluation_summary({"evaluation": meta, "metrics": summarize(rows)}), rows

    documented = 'def f(x):\n    """Twice x."""\n    return 2 * x'
    base = evaluation("base", {"p0": 1, "p1": 1, "p2": 2, "p3": None}, documented)
    tuned = evaluation("mucode", {"p0": 1, "p1": 2, "p2": 2, "p3": None}, "def f(x): return 2*x")
    records = first_answers([tuned[0], base[0]], {base[0].label: base[1], tuned[0].label: tuned[1]})
    by_method = {record["Method"]: record for record in records}
    assert by_method["Multi-turn Instruct (base)"]["Public pass (%)"] == "50.0"  # p0, p1 pass at turn 1
    assert by_method["µCode"]["Private pass (%)"] == "25.0"
    assert by_method["Multi-turn Instruct (base)"]["Code with a docstring (%)"] == "100.0"
    assert by_method["µCode"]["Code with a docstring (%)"] == "0.0"
    assert int(by_method["µCode"]["Median answer (characters)"]) == len("```python\ndef f(x): return 2*x\n```")


def test_add_arm_compares_against_the_runs_own_n1_evaluations_only(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("add_arm", REPO / "scripts" / "add_arm.py")
    add_arm = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(add_arm)
    store = ArtifactStore(str(tmp_path / "run"))
    solved = {"p0": 1, "p1": None}
    kept = [_store_evaluation(store, "base", "mbpp", 1, "random", solved),
            _store_evaluation(store, "mucode", "mbpp", 1, "random", {"p0": 2, "p1": None})]
    _store_evaluation(store, "mucode", "mbpp", 5, "pt+lv", solved)  # N = 5: not a row of the N = 1 report
    rows = rows_for("mbpp", 1, 3, solved, "random")
    store.put_frame(rows, stage="evaluate-rft", extra={"evaluation": {
        "method": "rft", "dataset": "mbpp", "n": 1, "selection": "random", "turns": 3, "searches": 1,
        "details": {"same_as": "base"}}, "metrics": summarize(rows)})  # an alias of the base model's rows
    found = add_arm.base_evaluations(store, turns=3)
    assert sorted(m["path"] for m in found) == sorted(str(e.path) for e in kept)
    assert add_arm.base_evaluations(store, turns=1) == []
