"""Report stage: the experiment's Table-1-style report, rebuilt from evaluation artifacts.

Each evaluation artifact (rows Parquet, manifest with method / dataset / N / selection and
the summary) is laid out as an evaluation directory under `ROOT/report/`, then
`mucode.report.write_report` writes `report.md` and its PNGs there; inside a flow run the
report is also published as Prefect artifacts. It runs no model.
"""

from __future__ import annotations

from pathlib import Path

from mucode.orchestration import stage_task

REPORT_DIR = "report"


def evaluation_label(manifest: dict) -> str:
    meta = manifest["evaluation"]
    return f"{meta['method']}-{meta['dataset']}-n{meta['n']}-{meta['selection']}".replace("/", "_").replace("+", "_")


def lay_out_evaluations(store, evaluations, out: Path) -> list:
    """Write each evaluation artifact as an evaluation directory `out/eval/<label>`; (summary, rows) of each."""
    from mucode.evaluation_dirs import EvaluationSummary, save_evaluation

    laid_out = []
    for evaluation in evaluations:
        manifest = store.manifest(evaluation)
        meta = manifest["evaluation"]
        summary = EvaluationSummary(method=meta["method"], dataset=meta["dataset"], n=meta["n"],
                                    selection=meta["selection"], turns=meta["turns"], searches=meta["searches"],
                                    metrics=manifest["metrics"], details=meta["details"],
                                    label=evaluation_label(manifest))
        rows = store.get_frame(evaluation)
        save_evaluation(out / "eval" / summary.label, rows, summary)
        laid_out.append((summary, rows))
    return laid_out


def report_stage(cfg, root: str, evaluations) -> str:
    """Store-level stage: lay out the evaluations and write the report; returns report.md's path."""
    from mucode.artifacts import ArtifactStore
    from mucode.publish import publish_report_artifacts
    from mucode.report import write_report

    store = ArtifactStore(root)
    out = Path(store.base) / REPORT_DIR
    summaries = [summary for summary, _ in lay_out_evaluations(store, evaluations, out)]
    report = write_report(summaries, out, source=root)
    publish_report_artifacts(out)
    return str(report)


report_task = stage_task(report_stage, name="report", sections=())
