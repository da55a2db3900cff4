"""Compare stage: the report of `mucode-compare`, rebuilt from evaluation artifacts and timings.

It writes everything the report stage writes (ROOT/report/report.md and its PNGs) plus
ROOT/report/compare.md: the training data of every arm and iteration (SFT examples, rollout
pass rate, verifier held-out AUC), Table 1 with every method (an arm with no training data
says so), the paired differences of the reference method (µCode) against each other one,
the problems only one method solves, BoN@t curves of every method, the BoN selection
ablation, the wall time of every computed stage (ROOT/timings.jsonl) and the configuration.
Inside a flow run compare.md is also published as a Prefect artifact. It runs no model.
"""

from __future__ import annotations

from mucode.orchestration import artifact_key, read_timings, stage_task
from mucode.tasks.report import REPORT_DIR

REFERENCE_METHOD = "mucode"


def reference_method(arms: list[str]) -> str:
    """The arm every other method is compared against: µCode when it runs, else the first arm."""
    return REFERENCE_METHOD if REFERENCE_METHOD in arms else arms[0]


def training_records(store, training: dict[str, list[dict]] | None) -> list[dict]:
    """Per arm and iteration, read from its artifacts: SFT examples, problems and target pass rate (relabel
    manifest), the rollouts' final-turn pass rate (aggregate), the verifier's held-out AUC (verifier manifest)."""
    records = []
    for arm, iterations in (training or {}).items():
        for entry in iterations:
            sft = store.manifest(entry["sft"]).get("metrics", {})
            verifier = store.manifest(entry["verifier"]).get("metrics", {}) if entry.get("verifier") else {}
            record = {"arm": arm, "iteration": entry["iteration"], "examples": int(entry["sft"].rows or 0),
                      "problems": sft.get("problems"), "target_pass_rate": sft.get("target_pass_rate"),
                      "heldout_auc": verifier.get("heldout_auc"), "rollout_pass_rate": None}
            if entry.get("aggregated") is not None:
                aggregated = store.get_frame(entry["aggregated"])
                finals = aggregated.filter(aggregated["final"] & (aggregated["iteration"] == entry["iteration"]))
                record["rollout_pass_rate"] = float(finals["oracle_passed"].mean()) if finals.height else None
            if record["examples"]:
                record["generator_state"] = "fine-tuned"
            elif entry.get("generator") is None:
                record["generator_state"] = "base model (no training data)"
            else:
                record["generator_state"] = "previous iteration's (no training data)"
            records.append(record)
    return records


def base_aggregate(store, training: dict[str, list[dict]] | None):
    """The aggregate of iteration 1, whose rollouts are the base model's (shared by every arm), or None."""
    for iterations in (training or {}).values():
        for entry in iterations:
            if entry["iteration"] == 1 and entry.get("aggregated") is not None:
                return store.get_frame(entry["aggregated"])
    return None


def compare_stage(cfg, root: str, evaluations, phases: dict[str, float] | None = None,
                  training: dict[str, list[dict]] | None = None) -> str:
    """Store-level stage: write report.md and compare.md for the evaluations; returns compare.md's path.

    `training`: per arm, per iteration, its `sft`, `verifier`, `aggregated` and `generator` artifacts.
    """
    from mucode.artifacts import ArtifactStore, write_atomically
    from mucode.evaluations import read_evaluations
    from mucode.compare import (
        ABLATION_FILE, ARM_CURVES_FILE, COMPARE_FILE, compare_markdown, headline_differences, plot_selection_ablation,
        first_answers, power_section, rollout_outcomes, titled, unique_solves)
    from mucode.publish import publish_markdown, publish_report_artifacts
    from mucode.report import plot_turn_curves, write_report

    store = ArtifactStore(root)
    out = store.local_folder(REPORT_DIR)
    summaries = read_evaluations(store, evaluations)
    write_report(summaries, out, source=root)
    rows = {summary.label: store.get_frame(evaluation) for summary, evaluation in zip(summaries, evaluations)}
    reference = reference_method(list(cfg.compare.arms))
    n, selection = cfg.evaluation.n, cfg.evaluation.selection
    differences = [difference for size in dict.fromkeys((1, n))
                   for difference in headline_differences(summaries, rows, method=reference, n=size, selection=selection,
                                                          resamples=cfg.compare.bootstrap_resamples, seed=cfg.seed)]
    # Every method at N=n with the headline rule; until those exist (a run in progress), the N=1 rows.
    curves = ([s for s in summaries if s.n == n and s.selection == selection]
              or [s for s in summaries if s.n == 1 and s.turns == cfg.evaluation.turns])
    if curves:
        plot_turn_curves(titled(curves, cfg.iterations), out / ARM_CURVES_FILE)
    ablation = plot_selection_ablation(summaries, reference, n, out / ABLATION_FILE)
    base_rollouts = base_aggregate(store, training)
    problem_counts = {s.dataset: int(s.metrics.get("problems", 0)) for s in summaries if s.metrics.get("problems")}
    power = (power_section(rollout_outcomes(base_rollouts), problem_counts)
             if base_rollouts is not None and problem_counts else "")
    markdown = compare_markdown(config=cfg.model_dump(mode="json"), summaries=summaries, differences=differences,
                                timings=read_timings(root), phases=phases or {}, reference_method=reference, n=n,
                                selection=selection, has_ablation_plot=ablation is not None,
                                curves_file=ARM_CURVES_FILE if curves else "", training=training_records(store, training),
                                only_solved=unique_solves(summaries, rows, cfg.iterations), power=power,
                                answers=first_answers(summaries, rows, cfg.iterations))
    path = out / COMPARE_FILE
    write_atomically(path, markdown.encode())
    publish_report_artifacts(out, summaries)
    publish_markdown(markdown, out, key=artifact_key(cfg.name, "compare"), description="µCode against its baselines")
    return f"{store.publish(REPORT_DIR)}/{COMPARE_FILE}"


# The phases' wall times are an input, so every flow run rewrites the report (it is cheap).
compare_task = stage_task(compare_stage, name="compare", sections=("compare", "evaluation", "seed"))
