"""Report stage: the experiment's Table-1-style report, rebuilt from evaluation artifacts.

The summaries are read from the evaluation artifacts' manifests (method / dataset / N /
selection and the metrics; `mucode.evaluations`), then `mucode.report.write_report` writes
`ROOT/report/report.md` and its PNGs; inside a flow run the report is also published as
Prefect artifacts. It runs no model.
"""

from __future__ import annotations

from mucode.orchestration import stage_task

REPORT_DIR = "report"


def report_stage(cfg, root: str, evaluations) -> str:
    """Store-level stage: write the report of the evaluations; returns report.md's path."""
    from mucode.artifacts import ArtifactStore
    from mucode.evaluations import read_evaluations
    from mucode.publish import publish_report_artifacts
    from mucode.report import write_report

    store = ArtifactStore(root)
    out = store.local_folder(REPORT_DIR)
    summaries = read_evaluations(store, evaluations)
    report = write_report(summaries, out, source=root)
    publish_report_artifacts(out, summaries)
    return f"{store.publish(REPORT_DIR)}/{report.name}"


report_task = stage_task(report_stage, name="report", sections=())
