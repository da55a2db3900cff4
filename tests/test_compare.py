"""mucode-compare: paired differences, the evaluation plan, the GPU plan, the compare report, the flow."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mucode.artifacts import ArtifactStore
from mucode.compare import (
    ABLATION_FILE, ARM_CURVES_FILE, COMPARE_FILE, CompareError, Difference, paired_difference, per_problem_bon,
    stage_cost_table)
from mucode.config import load_config
from mucode.flows.compare import arm_config, compare_plan, evaluation_plan
from mucode.flows.experiment import IterationRecord, read_iterations
from mucode.orchestration import TIMINGS_FILE, read_timings, record_timing
from mucode.tasks.compare import compare_stage
from mucode.tasks.evaluate import summarize
from tests.test_report import png_size, rows_for

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
    assert [(item.method, item.n) for item in plan if item.n == 1] == [(method, 1) for method in methods]
    assert {item.method for item in plan if item.n == n and item.selection == cfg.evaluation.selection} == set(methods)
    ablation = {item.selection for item in plan if item.method == "mucode" and item.n == n}
    assert ablation == set(cfg.compare.ablation_selections) | {cfg.evaluation.selection}
    assert len(plan) == len({(item.method, item.n, item.selection) for item in plan})  # nothing twice
    assert not any(item.uses_verifier for item in plan if item.n == 1)
    single = evaluation_plan(load_config(CPU_CONFIG, ["evaluation.n=1"]))
    assert all(item.n == 1 for item in single) and len(single) == len(methods)


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
    record_timing(str(tmp_path), "finetune", "finetune", 30.25, peak_bytes=3 * 2**30 + 2**28)
    with open(tmp_path / TIMINGS_FILE, "a") as timings:
        timings.write('{"stage": "verif')  # a crash mid-write
    records = read_timings(str(tmp_path))
    assert [(r["stage"], r["wall_s"], r["peak_rss_gib"]) for r in records] == [("rollout", 12.5, None),
                                                                                ("finetune", 30.25, 3.25)]
    table = stage_cost_table(records)
    assert "| rollout | 1 | 12 | 12 | n/a |" in table and "| finetune | 1 | 30 | 30 | 3.25 |" in table
    assert "**43**" in table and table.rstrip().endswith("| 3.25 |")


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
    assert "| MBPP | µCode − Multi-turn Instruct (base) | +66.7 |" in text
    assert "| MBPP | µCode − Multi-turn RFT (Multi-STaR) | +66.7 |" in text
    assert "higher" in text and "| rollout | 1 | 61 |" in text and "| train mucode | 100 |" in text
    assert f"name: {cfg.name}" in text  # the configuration is in the report
    for image in (ARM_CURVES_FILE, ABLATION_FILE):
        width, height = png_size(path.parent / image)
        assert width > 100 and height > 100
    assert (path.parent / "report.md").is_file()


@pytest.mark.slow
def test_compare_flow_runs_every_arm_from_shared_base_rollouts(tmp_path, data_dir):
    """The real flow on tiny settings: three arms, one shared rollout stage, a report."""
    from mucode.flows.compare import mucode_compare

    overrides = [f"run_dir={tmp_path}", f"data.data_dir={data_dir}", "data.train_limit=2", "data.eval_limit=1",
                 "data.eval_datasets=[humaneval]", "rollout.num_rollouts=2", "rollout.max_turns=1",
                 "rollout.sampling.max_new_tokens=24", "evaluation.sampling.max_new_tokens=24", "evaluation.turns=1",
                 "evaluation.n=2", "evaluation.searches=1", "compare.ablation_selections=[pt]",
                 "finetune.epochs=1", "verifier.epochs=1"]
    report = Path(mucode_compare(config=str(CPU_CONFIG), overrides=overrides))
    text = report.read_text()
    for method in ("Multi-turn Instruct (base)", "µCode", "Multi-turn RFT (Multi-STaR)", "Multi-STaR²"):
        assert f"| {method}" in text
    computed = [record["stage"] for record in read_timings(str(report.parents[1]))]
    assert computed.count("rollout") == 1  # iteration 1's rollouts ran once for three arms
    assert computed.count("relabel") == 3
    states = sorted(path.parent.name for path in report.parents[1].glob("arms/*/state.json"))
    assert states == ["mucode", "oracle", "rft"]
    untrained = [arm for arm in ("rft", "oracle")
                 if read_iterations(str(report.parents[1] / "arms" / arm))[-1].generator is None]
    # An arm left at the base model is not searched again: it takes the base model's rows.
    assert computed.count("evaluate-alias") == 2 * len(untrained)  # N=1 and N=2 on one dataset


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
