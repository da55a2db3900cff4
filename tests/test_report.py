"""The report: evaluate artifacts of a run -> Table 1 markdown, PNG plots, Prefect artifacts."""

from __future__ import annotations

import json
from types import SimpleNamespace
from pathlib import Path

import polars as pl
import pytest
from matplotlib.figure import Figure

from mucode.artifacts import ArtifactStore
from mucode.evaluations import EvaluationSummary, ReportError, load_evaluations
from mucode.orchestration import artifact_key
from mucode.publish import inline_images, publish_report_artifacts
from mucode.report import (
    CURVES_FILE,
    REPORT_FILE,
    SCALING_FILE,
    build_report,
    percent_axis_top,
    scaling_groups,
    set_percent_ylim,
    table_records,
)
from mucode.eval_summary import summarize
from report_support import PNG_SIGNATURE, png_size, rows_for



def save(run_dir: Path, method: str, dataset: str, n: int, solved_turn: dict, turns: int = 3,
         selection: str = "pt"):
    """An evaluate artifact of the run, as the evaluate stage stores it."""
    rows = rows_for(dataset, n, turns, solved_turn, selection)
    meta = {"method": method, "dataset": dataset, "n": n, "selection": selection, "turns": turns, "searches": 1,
            "details": {"generator": "g"}}
    return ArtifactStore(run_dir).put_frame(rows, stage=f"evaluate-{method}",
                                            extra={"evaluation": meta, "metrics": summarize(rows)})


@pytest.fixture()
def run_dir(tmp_path: Path) -> Path:
    solved = {f"p{i}": [1, 2, 3, None][i % 4] for i in range(8)}  # bon@1 .25, bon@2 .5, bon@3 .75
    better = {f"p{i}": [1, 1, 2, None][i % 4] for i in range(8)}  # bon@1 .5, bon@3 .75
    save(tmp_path, "Multi-turn Instruct", "humaneval", 1, solved)
    save(tmp_path, "Multi-turn Instruct", "humaneval", 5, better)
    save(tmp_path, "Multi-turn Instruct", "mbpp", 1, better)
    save(tmp_path, "µCode", "humaneval", 2, better, selection="pt+lv")
    save(tmp_path, "µCode", "humaneval", 4, {k: 1 for k in better}, selection="pt+lv")
    return tmp_path


def test_evaluations_round_trip_through_their_manifests(run_dir: Path):
    summaries = load_evaluations(run_dir)
    assert [s.label for s in summaries] == [
        "Multi-turn Instruct-humaneval-n1-pt", "Multi-turn Instruct-humaneval-n5-pt", "Multi-turn Instruct-mbpp-n1-pt",
        "µCode-humaneval-n2-pt_lv", "µCode-humaneval-n4-pt_lv"]
    first = summaries[0]
    assert (first.method, first.dataset, first.n, first.selection, first.turns) == (
        "Multi-turn Instruct", "humaneval", 1, "pt", 3)
    assert first.metrics["bon@3"] == pytest.approx(0.75)
    assert first.details == {"generator": "g"}
    (first_rows,) = [m for m in ArtifactStore(run_dir).list() if m["evaluation"]["n"] == 1
                     and m["evaluation"]["dataset"] == "humaneval"]
    assert pl.read_parquet(first_rows["path"]).height == 8 * 3


def test_table_is_laid_out_like_table_1(run_dir: Path):
    records = table_records(load_evaluations(run_dir))
    assert [(r["Method"], r["N"]) for r in records] == [
        ("Multi-turn Instruct", "1"), ("+ BoN (pt)", "5"), ("µCode + BoN (pt+lv)", "2"), ("+ BoN (pt+lv)", "4")]
    assert list(records[0]) == ["Method", "N", "T", "HumanEval", "MBPP"]
    assert records[0]["HumanEval"].startswith("75.0 [")
    assert records[0]["MBPP"].startswith("75.0 [")
    assert records[1]["MBPP"] == "–"
    assert records[3]["HumanEval"] == "100.0 [100.0, 100.0]"


def test_build_report_writes_markdown_and_valid_pngs(run_dir: Path):
    report = build_report(run_dir)
    assert report == run_dir / REPORT_FILE
    text = report.read_text()
    assert "| Method | N | T | HumanEval | MBPP |" in text
    assert "| Multi-turn Instruct | 1 | 3 | 75.0 [" in text
    assert f"![BoN@t per turn]({CURVES_FILE})" in text
    assert f"![BoN@T against N]({SCALING_FILE})" in text
    assert "### `µCode-humaneval-n4-pt_lv`: µCode, N=4 (pt+lv) on HumanEval" in text
    assert "| bon@1 | 25.0 |" in text
    # 5 x 4 inches per dataset panel at 110 dpi: both datasets have turn curves, only
    # HumanEval has several N.
    for image, panels in ((CURVES_FILE, 2), (SCALING_FILE, 1)):
        assert png_size(run_dir / image) == (550 * panels, 440), image
        assert (run_dir / image).stat().st_size > 10_000


@pytest.mark.parametrize(
    ("values", "top"),
    [([3.0, 6.1], 20.0), ([10.0], 20.0), ([0.0, 14.9], 30.0), ([75.0, 92.0], 100.0), ([], 100.0),
     ([float("nan"), 4.0], 20.0)],
)
def test_percent_axis_top_leaves_room_above_the_highest_value_up_to_100(values: list[float], top: float):
    assert percent_axis_top(values) == top


def test_percent_ylim_fits_what_is_drawn_with_a_margin_at_each_end():
    lines, errorbars, bars, empty = Figure().subplots(1, 4)
    lines.plot([1, 2, 3], [3.0, 4.3, 4.9])
    lines.fill_between([1, 2, 3], [1.2, 1.2, 1.8], [7.9, 7.9, 12.5])  # only the interval passes 10
    errorbars.errorbar([1, 5], [70.0, 80.0], yerr=[[5.0, 5.0], [5.0, 15.0]])  # 95 at the top
    bars.bar([0, 1], [8.0, 3.0], yerr=[[1.0, 1.0], [4.0, 1.0]])  # only the error bar passes 10
    for axis in (lines, errorbars, bars, empty):
        set_percent_ylim(axis)
    assert lines.get_ylim() == pytest.approx((-0.9, 30.9))
    assert errorbars.get_ylim() == pytest.approx((-3.0, 103.0))
    assert bars.get_ylim() == pytest.approx((-0.9, 30.9))
    assert empty.get_ylim() == pytest.approx((-3.0, 103.0))


def test_scaling_needs_one_method_at_several_n(tmp_path: Path):
    save(tmp_path, "base", "humaneval", 1, {"p": 1})
    save(tmp_path, "base", "mbpp", 5, {"p": 1}, selection="pt+lv")
    save(tmp_path, "tuned", "humaneval", 5, {"p": 1}, selection="pt+lv")
    (tmp_path / SCALING_FILE).write_bytes(b"stale")
    text = build_report(tmp_path).read_text()
    assert not (tmp_path / SCALING_FILE).exists()
    assert "No method was evaluated at several N" in text
    assert png_size(tmp_path / CURVES_FILE)[0] > 400


def test_scaling_groups_sort_by_n_and_n1_joins_every_selection(run_dir: Path):
    groups = scaling_groups(load_evaluations(run_dir))
    assert {key: [s.n for s in group] for key, group in groups.items()} == {
        ("Multi-turn Instruct", "humaneval", "pt", 3): [1, 5],
        ("µCode", "humaneval", "pt+lv", 3): [2, 4],
    }
    save(run_dir, "µCode", "humaneval", 1, {"p": 1}, selection="random")
    groups = scaling_groups(load_evaluations(run_dir))
    assert [s.n for s in groups[("µCode", "humaneval", "pt+lv", 3)]] == [1, 2, 4]


def test_other_stages_artifacts_are_not_evaluations(run_dir: Path):
    store = ArtifactStore(run_dir)
    store.put_frame(pl.DataFrame({"loss": [0.1]}), stage="finetune", extra={"metrics": {"loss": 0.1}})
    assert len(load_evaluations(run_dir)) == 5
    (run_dir / "finetune").mkdir()
    (run_dir / "finetune" / "summary.json").write_text(json.dumps({"loss": 0.1}))
    assert len(load_evaluations(run_dir)) == 5


def test_missing_run_dir_and_empty_run_dir_fail_with_one_line(tmp_path: Path):
    with pytest.raises(ReportError, match="does not exist"):
        build_report(tmp_path / "nope")
    with pytest.raises(ReportError, match="no evaluations under"):
        build_report(tmp_path)


def test_malformed_evaluation_manifest_is_named(run_dir: Path):
    manifest = next(Path(m["path"]).with_suffix(".json") for m in ArtifactStore(run_dir).list()
                    if m["evaluation"]["n"] == 5)
    manifest.write_text(manifest.read_text().replace('"metrics"', '"metrics_gone"'))
    with pytest.raises(ReportError, match=f"{manifest.with_suffix('.parquet')}: malformed evaluation manifest"):
        build_report(run_dir)


def test_a_torn_manifest_is_named_on_stderr_and_the_other_evaluations_still_load(run_dir: Path, capsys):
    manifest = next(Path(m["path"]).with_suffix(".json") for m in ArtifactStore(run_dir).list()
                    if m["evaluation"]["n"] == 5)
    manifest.write_text(manifest.read_text()[:40])
    assert len(load_evaluations(run_dir)) == 4
    assert f"skipped {manifest}: corrupt manifest" in capsys.readouterr().err


def test_inline_images_embeds_local_pngs_only(tmp_path: Path):
    (tmp_path / "a.png").write_bytes(PNG_SIGNATURE + b"rest")
    text = inline_images("x ![A](a.png) y ![B](missing.png)", tmp_path)
    assert "![A](data:image/png;base64,iVBORw0KGgpyZXN0)" in text
    assert "![B](missing.png)" in text


def test_artifact_keys_are_lowercase_dashes():
    assert artifact_key("µCode Run_1", "bon_at_t") == "code-run-1-bon-at-t"


def test_publishing_outside_a_flow_does_nothing(run_dir: Path):
    build_report(run_dir)
    assert publish_report_artifacts(run_dir, load_evaluations(run_dir)) == []


@pytest.mark.slow
def test_publishing_inside_a_flow_creates_table_markdown_and_images(prefect_harness, run_dir: Path):
    from prefect import flow
    from prefect.client.orchestration import get_client

    build_report(run_dir)
    keys = ["test-report-table1", "test-report-report", "test-report-bon-at-t", "test-report-scaling"]

    @flow
    def publish() -> int:
        return len(publish_report_artifacts(run_dir, load_evaluations(run_dir), key_prefix="test-report"))

    assert publish() == 4
    with get_client(sync_client=True) as client:
        # Prefect 3.8.8's server rejects the nulls its own client.read_artifacts sends.
        response = client.request("POST", "/artifacts/filter", json={
            "artifacts": {"key": {"any_": keys}}, "limit": 10, "offset": 0, "sort": "KEY_ASC"})
    artifacts = [SimpleNamespace(**artifact) for artifact in response.json()]
    by_key = {artifact.key: artifact for artifact in artifacts}
    assert sorted(by_key) == sorted(keys)
    assert all(artifact.flow_run_id is not None for artifact in artifacts)
    assert by_key["test-report-table1"].type == "table"
    table = json.loads(by_key["test-report-table1"].data)
    assert [row["Method"] for row in table] == [r["Method"] for r in table_records(load_evaluations(run_dir))]
    markdown = by_key["test-report-report"].data
    assert by_key["test-report-report"].type == "markdown"
    assert "](data:image/png;base64," in markdown and "](bon_at_t.png)" not in markdown
    assert by_key["test-report-scaling"].type == "image"
    assert by_key["test-report-scaling"].data.startswith("data:image/png;base64,iVBORw0KGgo")


def test_report_stage_writes_the_report_of_the_given_evaluations_from_their_manifests(run_dir: Path):
    from mucode.config import parse_config
    from mucode.tasks.report import REPORT_DIR, report_stage

    chosen = [save(run_dir, "base", "humaneval", 1, {"p": 1}), save(run_dir, "tuned", "humaneval", 1, {"p": None})]
    report = Path(report_stage(parse_config({}), str(run_dir), chosen))
    assert report == run_dir / REPORT_DIR / REPORT_FILE
    records = table_records(load_evaluations(run_dir))
    assert len(records) > 2  # the run holds more evaluations than the two reported
    text = report.read_text()
    assert "Built from 2 evaluation(s)" in text and "| base | 1 | 3 | 100.0 [" in text and "| tuned | 1 | 3 | 0.0 [" in text
    assert sorted(path.name for path in report.parent.iterdir()) == [CURVES_FILE, REPORT_FILE]  # no evaluation copies
