"""mucode.nightly: the history entry, its Markdown, the JSONL history and the trend plot."""

from __future__ import annotations

from mucode.nightly import append_history, bon_table, nightly_entry, nightly_markdown, plot_history, read_history


def _metrics(bon1: float, bon2: float, problems: int) -> dict:
    return {"bon@1": bon1, "bon@1.ci_low": bon1 / 2, "bon@1.ci_high": min(1.0, bon1 * 2),
            "bon@2": bon2, "bon@2.ci_low": bon2 / 2, "bon@2.ci_high": min(1.0, bon2 * 2), "problems": problems}


def test_bon_table_reads_values_and_intervals_and_marks_missing_ones():
    table = bon_table({"bon@1": 0.25, "bon@1.ci_low": 0.0, "bon@1.ci_high": 0.5, "bon@2": float("nan")}, turns=2)
    assert table == {"bon@1": [0.25, 0.0, 0.5], "bon@2": [None, None, None]}


def test_entry_markdown_history_and_plot(tmp_path):
    root = str(tmp_path / "smoke")
    for iteration, (this, previous) in enumerate([(0.2, 0.1), (0.3, 0.2)], start=1):
        evaluations = {"humaneval": {"this": _metrics(this, this + 0.1, 10), "previous": _metrics(previous, previous, 10),
                                     "base": _metrics(0.1, 0.1, 10)}}
        entry = nightly_entry("smoke", iteration, 2, evaluations, {f"iteration {iteration}": 0.61},
                              {"fine-tuning examples": 7}, {"rollout-1": 12.34})
        append_history(root, entry)
    markdown = nightly_markdown(entry)
    assert "## humaneval (10 problems), BoN@t % [95% interval]" in markdown
    assert "| this | 30.0 [15.0, 60.0] | 40.0 [20.0, 80.0] |" in markdown
    assert "| base | 10.0 [5.0, 20.0] | 10.0 [5.0, 20.0] |" in markdown
    assert "| iteration 2 | 0.610 |" in markdown and "| rollout-1 | 12.3 |" in markdown
    (tmp_path / "smoke" / "nightly.jsonl").open("a").write('{"cut short')  # a crash mid-line
    history = read_history(root)
    assert [entry["iteration"] for entry in history] == [1, 2]
    plot = plot_history(history, tmp_path / "smoke" / "nightly.png")
    assert plot.stat().st_size > 5000


def test_history_and_plot_are_kept_in_an_object_store_too():
    from mucode.artifacts import ArtifactStore
    from mucode.nightly import PLOT_FILE

    root = "memory://nightly-history/smoke"
    for iteration in (1, 2):
        evaluations = {"mbpp": {"this": _metrics(0.2, 0.3, 10), "base": _metrics(0.1, 0.1, 10)}}
        append_history(root, nightly_entry("smoke", iteration, 2, evaluations, {}, {}, {}))
    history = read_history(root)
    assert [entry["iteration"] for entry in history] == [1, 2]
    store = ArtifactStore(root)
    plot_history(history, store.local_folder(PLOT_FILE))
    store.publish(PLOT_FILE)
    assert len(store.fs.cat_file(f"{store.base}/{PLOT_FILE}")) > 5000
