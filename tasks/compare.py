"""Compare stage: the report of `mucode-compare`, rebuilt from evaluation artifacts and timings.

It writes everything the report stage writes (ROOT/report/report.md and its PNGs) plus
ROOT/report/compare.md: Table 1 with every method, the paired differences of the reference
method (µCode) against each other one, BoN@t curves of every method, the BoN selection
ablation, the wall time of every computed stage (ROOT/timings.jsonl) and the configuration.
Inside a flow run compare.md is also published as a Prefect artifact. It runs no model.
"""

from __future__ import annotations

from pathlib import Path

from mucode.orchestration import artifact_key, read_timings, stage_task
from mucode.tasks.report import REPORT_DIR, lay_out_evaluations

REFERENCE_METHOD = "mucode"


def reference_method(arms: list[str]) -> str:
    """The arm every other method is compared against: µCode when it runs, else the first arm."""
    return REFERENCE_METHOD if REFERENCE_METHOD in arms else arms[0]


def compare_stage(cfg, root: str, evaluations, phases: dict[str, float] | None = None) -> str:
    """Store-level stage: write report.md and compare.md for the evaluations; returns compare.md's path."""
    from mucode.artifacts import ArtifactStore, write_atomically
    from mucode.compare import (
        ABLATION_FILE, ARM_CURVES_FILE, COMPARE_FILE, compare_markdown, headline_differences, plot_selection_ablation,
        titled)
    from mucode.report import in_prefect_run, inline_images, plot_turn_curves, publish_report_artifacts, write_report

    store = ArtifactStore(root)
    out = Path(store.base) / REPORT_DIR
    laid_out = lay_out_evaluations(store, evaluations, out)
    summaries = [summary for summary, _ in laid_out]
    write_report(summaries, out, source=root)
    rows = {summary.label: frame for summary, frame in laid_out}
    reference = reference_method(list(cfg.compare.arms))
    n, selection = cfg.evaluation.n, cfg.evaluation.selection
    differences = headline_differences(summaries, rows, method=reference, n=n, selection=selection,
                                       resamples=cfg.compare.bootstrap_resamples, seed=cfg.seed)
    plot_turn_curves(titled([s for s in summaries if s.n == n and s.selection == selection]), out / ARM_CURVES_FILE)
    ablation = plot_selection_ablation(summaries, reference, n, out / ABLATION_FILE)
    markdown = compare_markdown(config=cfg.model_dump(mode="json"), summaries=summaries, differences=differences,
                                timings=read_timings(root), phases=phases or {}, reference_method=reference, n=n,
                                selection=selection, has_ablation_plot=ablation is not None,
                                curves_file=ARM_CURVES_FILE)
    path = out / COMPARE_FILE
    write_atomically(path, markdown.encode())
    if in_prefect_run():
        from prefect.artifacts import create_markdown_artifact

        publish_report_artifacts(out)
        create_markdown_artifact(markdown=inline_images(markdown, out), key=artifact_key(cfg.name, "compare"),
                                 description="µCode against its baselines")
    return str(path)


# The phases' wall times are an input, so every flow run rewrites the report (it is cheap).
compare_task = stage_task(compare_stage, name="compare", sections=("compare", "evaluation", "seed"))
