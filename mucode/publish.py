"""Prefect artifacts of a finished report: the Table 1 table, the Markdown report with its
images inlined, each PNG; and the progress artifact of a long stage.

Everything here is a no-op outside a Prefect flow or task run (`in_a_run`), so plain CLI runs
never start a Prefect server. It builds no report (that is `mucode.report`).
"""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Sequence
from pathlib import Path
from uuid import UUID

from mucode.evaluations import EvaluationSummary, ReportError
from mucode.orchestration import artifact_key, in_a_run

PROGRESS_UPDATE_EVERY_S = 5.0
_IMAGE_LINK = re.compile(r"!\[([^\]]*)\]\(([^)\s]+\.png)\)")


def png_data_uri(path: str | Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def inline_images(markdown: str, base_dir: Path) -> str:
    """Replace links to local PNGs by data: URIs, so the Prefect UI shows them without a file server."""
    def replace(match: re.Match[str]) -> str:
        image = base_dir / match.group(2)
        return f"![{match.group(1)}]({png_data_uri(image)})" if image.is_file() else match.group(0)

    return _IMAGE_LINK.sub(replace, markdown)


def publish_markdown(markdown: str, base_dir: Path, *, key: str, description: str) -> UUID | None:
    """A Markdown artifact whose local PNG links (relative to `base_dir`) are inlined."""
    if not in_a_run():
        return None
    from prefect.artifacts import create_markdown_artifact

    return create_markdown_artifact(markdown=inline_images(markdown, base_dir), key=key, description=description)


def publish_report_artifacts(report_dir: str | Path, summaries: Sequence[EvaluationSummary],
                             key_prefix: str = "mucode") -> list[UUID]:
    """Publish the Table 1 table of `summaries`, the report in `report_dir` (images inlined)
    and each PNG as Prefect artifacts.

    Does nothing (returns []) outside a Prefect flow or task run, so plain CLI runs never start
    a Prefect server. Build the report first (`build_report`).
    """
    if not in_a_run():
        return []
    from prefect.artifacts import create_image_artifact, create_table_artifact

    from mucode.report import CURVES_FILE, REPORT_FILE, SCALING_FILE, table_records

    directory = Path(report_dir)
    report = directory / REPORT_FILE
    if not report.is_file():
        raise ReportError(f"{report} does not exist: call build_report({str(directory)!r}) first")
    created = [
        create_table_artifact(table=table_records(summaries), key=artifact_key(key_prefix, "table1"),
                              description="BoN@T (%) [95% CI] by method and dataset"),
        publish_markdown(report.read_text(), directory, key=artifact_key(key_prefix, "report"),
                         description="µCode evaluation report"),
    ]
    for image in (directory / CURVES_FILE, directory / SCALING_FILE):
        if image.is_file():
            created.append(create_image_artifact(image_url=png_data_uri(image), key=artifact_key(key_prefix, image.stem),
                                                 description=image.name))
    return created


class ProgressArtifact:
    """A Prefect progress artifact, updated at most every PROGRESS_UPDATE_EVERY_S seconds."""

    def __init__(self, description: str):
        from prefect.artifacts import create_progress_artifact

        self.description = description
        self.artifact_id = create_progress_artifact(0.0, description=description)
        self.last_update = 0.0

    def update(self, fraction: float, detail: str, force: bool = False) -> None:
        from prefect.artifacts import update_progress_artifact

        now = time.monotonic()
        if force or now - self.last_update >= PROGRESS_UPDATE_EVERY_S:
            update_progress_artifact(self.artifact_id, 100.0 * fraction, description=f"{self.description} {detail}".strip())
            self.last_update = now
