"""mucode.orchestration: cache keys, artifact validity, subprocess stages, artifacts, Dask batches.

Toy stage functions below stand in for the real stages: each appends a line to a call log in
its experiment directory, so a test counts how often a stage really ran. Flows run under
`prefect_test_harness` (a real temporary Prefect server), with results persisted to a
temporary directory.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import polars as pl
import pytest
from prefect import flow

from mucode.artifacts import Artifact, ArtifactStore
from mucode.orchestration import (
    OrchestrationError,
    artifact_at,
    artifact_key,
    cache_token,
    experiment_root,
    result_is_usable,
    run_batches,
    run_in_subprocess,
    stage_task,
)
from mucode.progress import stage_progress
from prefect_support import calls, flow_run_artifacts, log_call, make_config


# -- toy stages (module level: a GPU-style subprocess imports them by name) -------------------

def toy_generate(cfg, root: str, rows: int) -> Artifact:
    log_call(root, "generate")
    frame = pl.DataFrame({"x": list(range(rows)), "t": [cfg.rollout.sampling.temperature] * rows})
    metrics = {"pass_rate": 0.5, "loss": [2.0, 1.0, 0.25]}
    return ArtifactStore(root).put_frame(frame, stage="generate", config_hash=cfg.section_digest("rollout"),
                                         extra={"metrics": metrics})


def toy_label(cfg, root: str, source: Artifact) -> Artifact:
    log_call(root, "label")
    store = ArtifactStore(root)
    frame = store.get_frame(source).with_columns((pl.col("x") % 2 == 0).alias("passed"))
    return store.put_frame(frame, stage="label", inputs=[source.hash])


def toy_model(cfg, root: str, source: Artifact) -> Artifact:
    log_call(root, "model")
    store = ArtifactStore(root)
    folder = Path(root) / "scratch-model"
    folder.mkdir(exist_ok=True)
    (folder / "weights.bin").write_bytes(bytes(store.get_frame(source).height) * 1000)
    (folder / "config.json").write_text(json.dumps({"pid": os.getpid()}))
    return store.put_dir(folder, stage="model", inputs=[source.hash], extra={"metrics": {"pid": os.getpid()}})


def toy_split(cfg, root: str, rows: int) -> list[Artifact]:
    log_call(root, "split")
    store = ArtifactStore(root)
    return [store.put_frame(pl.DataFrame({"x": [part] * rows}), stage="split") for part in range(2)]


def toy_counted(cfg, root: str, steps: int) -> Artifact:
    with stage_progress(steps, "counting") as advance:
        for done in range(1, steps + 1):
            advance(done, "")
    return ArtifactStore(root).put_frame(pl.DataFrame({"x": [steps]}), stage="counted")


def toy_allocate(cfg, root: str, megabytes: int) -> Artifact:
    """Touches `megabytes` of fresh memory, then frees it: its peak RSS must show them."""
    block = bytearray(megabytes << 20)
    block[::4096] = b"x" * len(block[::4096])  # bytearray() is zeroed lazily: touch every page
    del block
    return ArtifactStore(root).put_frame(pl.DataFrame({"megabytes": [megabytes]}), stage="allocate")


generate_task = stage_task(toy_generate, name="generate", sections=("rollout", "seed"))
label_task = stage_task(toy_label, name="label", sections=("sandbox",))
model_task = stage_task(toy_model, name="model", sections=("finetune",), gpu=True)
split_task = stage_task(toy_split, name="split", sections=())
counted_task = stage_task(toy_counted, name="counted", sections=())
allocate_task = stage_task(toy_allocate, name="allocate", sections=(), gpu=True)


@flow
def toy_pipeline(run_dir: str, overrides: dict | None = None, rows: int = 5) -> dict:
    cfg = make_config(run_dir, overrides)
    root = experiment_root(cfg)
    generated = generate_task(cfg, root, rows=rows, return_state=True)
    labelled = label_task(cfg, root, source=generated.result(), return_state=True)
    model = model_task(cfg, root, source=labelled.result(), return_state=True)
    return {"states": {name: state.name for name, state in
                       (("generate", generated), ("label", labelled), ("model", model))},
            "artifacts": {"generate": generated.result(), "label": labelled.result(), "model": model.result()},
            "root": root}


# -- cache keys (no server) --------------------------------------------------------------------

def test_cache_token_uses_section_digest_and_artifact_hash(tmp_path):
    cfg = make_config(str(tmp_path))
    other_finetune = make_config(str(tmp_path), {"finetune": {"learning_rate": 0.1}})
    artifact = Artifact(hash="abc", path="/somewhere/abc.parquet", kind="frame", stage="s", rows=3)
    moved = Artifact(hash="abc", path="/elsewhere/abc.parquet", kind="frame", stage="s", rows=3)
    assert cache_token(cfg, ("rollout",)) == cache_token(other_finetune, ("rollout",))
    assert cache_token(cfg, None) != cache_token(other_finetune, None)
    assert cache_token([artifact, None], None) == cache_token([moved, None], None) == [
        {"artifact": "abc", "kind": "frame"}, None]
    # What Prefect's INPUTS + TASK_SOURCE then hashes must be JSON, hence stable across processes.
    assert json.loads(json.dumps(cache_token({"cfg": cfg, "a": artifact}, ("rollout",))))


def test_result_is_usable_follows_artifacts_lists_and_paths(tmp_path):
    store = ArtifactStore(tmp_path)
    good = store.put_frame(pl.DataFrame({"x": [1]}), stage="s")
    gone = store.put_frame(pl.DataFrame({"x": [2]}), stage="s")
    os.remove(gone.path)
    report = tmp_path / "report.md"
    report.write_text("# r")
    assert result_is_usable(good, str(tmp_path)) and result_is_usable([good, None], str(tmp_path))
    assert not result_is_usable([good, gone], str(tmp_path))
    assert result_is_usable(str(report), str(tmp_path)) and not result_is_usable(str(tmp_path / "x.md"), str(tmp_path))


def test_stage_task_rejects_bad_stage_functions_in_one_line():
    def no_root(cfg, rows):
        return None

    with pytest.raises(OrchestrationError, match=r"must start with \(cfg, root, \.\.\.\)"):
        stage_task(no_root, name="x")
    with pytest.raises(OrchestrationError, match="unknown config sections \\['rolout'\\]"):
        stage_task(toy_generate, name="x", sections=("rolout",))


def test_stage_task_settings():
    assert generate_task.name == "generate" and generate_task.persist_result is True
    assert generate_task.cache_policy.sections == ("rollout", "seed")
    assert "RunId" not in repr(generate_task.cache_policy)  # nothing run-specific in the key
    # Prefect hashes the stage's own source (functools.wraps), not the wrapper's.
    assert "def toy_generate" in generate_task.source_code


def test_artifact_at_rebuilds_a_reference_from_its_manifest(tmp_path):
    store = ArtifactStore(tmp_path)
    artifact = store.put_frame(pl.DataFrame({"x": [1, 2]}), stage="rollout")
    assert artifact_at(artifact.path, str(tmp_path)) == artifact
    with pytest.raises(Exception, match="is missing"):
        artifact_at(str(tmp_path / "artifacts" / "rollout" / "nope.parquet"), str(tmp_path))


def test_artifact_key_is_prefect_safe():
    assert artifact_key("Smoke_1", "rollout it.2") == "smoke-1-rollout-it-2"


# -- caching under a real Prefect server ------------------------------------------------------

@pytest.mark.slow
def test_second_run_is_a_cache_hit_in_another_flow_run(prefect_harness, tmp_path):
    started = time.perf_counter()
    first = toy_pipeline(str(tmp_path))
    first_s = time.perf_counter() - started
    started = time.perf_counter()
    second = toy_pipeline(str(tmp_path))
    second_s = time.perf_counter() - started
    root = first["root"]
    assert first["states"] == {"generate": "Completed", "label": "Completed", "model": "Completed"}
    assert second["states"] == {"generate": "Cached", "label": "Cached", "model": "Cached"}
    assert [calls(root, stage) for stage in ("generate", "label", "model")] == [1, 1, 1]
    assert second["artifacts"] == first["artifacts"]
    print(f"toy pipeline: first run {first_s:.2f} s, cached re-run {second_s:.2f} s")


@pytest.mark.slow
def test_deleted_artifact_is_recomputed_and_downstream_stays_cached(prefect_harness, tmp_path):
    first = toy_pipeline(str(tmp_path))
    os.remove(first["artifacts"]["generate"].path)
    second = toy_pipeline(str(tmp_path))
    # Same inputs give the same bytes, hence the same hash: the label stage's key is unchanged.
    assert second["states"] == {"generate": "Completed", "label": "Cached", "model": "Cached"}
    assert calls(first["root"], "generate") == 2 and calls(first["root"], "label") == 1
    assert ArtifactStore(first["root"]).is_valid(second["artifacts"]["generate"])


@pytest.mark.slow
def test_truncated_parquet_is_recomputed(prefect_harness, tmp_path):
    first = toy_pipeline(str(tmp_path))
    path = first["artifacts"]["label"].path
    os.truncate(path, os.path.getsize(path) // 2)
    second = toy_pipeline(str(tmp_path))
    assert second["states"] == {"generate": "Cached", "label": "Completed", "model": "Cached"}
    assert calls(first["root"], "label") == 2
    assert ArtifactStore(first["root"]).get_frame(second["artifacts"]["label"]).height == 5


@pytest.mark.slow
def test_corrupt_model_directory_is_recomputed(prefect_harness, tmp_path):
    first = toy_pipeline(str(tmp_path))
    (Path(first["artifacts"]["model"].path) / "weights.bin").write_bytes(b"garbage")
    second = toy_pipeline(str(tmp_path))
    assert second["states"]["model"] == "Completed" and calls(first["root"], "model") == 2


@pytest.mark.slow
def test_config_section_change_recomputes_only_the_stages_that_read_it(prefect_harness, tmp_path):
    toy_pipeline(str(tmp_path))
    rollout_changed = toy_pipeline(str(tmp_path), {"rollout": {"sampling": {"temperature": 0.1}}})
    assert rollout_changed["states"] == {"generate": "Completed", "label": "Completed", "model": "Completed"}
    # A section no toy stage reads: everything is shared (what lets compare arms share stages).
    verifier_changed = toy_pipeline(str(tmp_path), {"verifier": {"learning_rate": 0.5}})
    assert verifier_changed["states"] == {"generate": "Cached", "label": "Cached", "model": "Cached"}
    sandbox_changed = toy_pipeline(str(tmp_path), {"sandbox": {"timeout_s": 3.0}})
    assert sandbox_changed["states"] == {"generate": "Cached", "label": "Completed", "model": "Cached"}


@pytest.mark.slow
def test_changed_input_value_recomputes(prefect_harness, tmp_path):
    toy_pipeline(str(tmp_path), rows=5)
    other = toy_pipeline(str(tmp_path), rows=6)
    assert other["states"]["generate"] == "Completed"


@pytest.mark.slow
def test_changed_stage_source_recomputes(prefect_harness, tmp_path):
    original = stage_task(toy_split, name="split")
    edited = stage_task(toy_split, name="split")
    # TASK_SOURCE hashes the source Prefect captured from the stage function; an edit changes it.
    edited.source_code = original.source_code.replace("return [", "return list([")

    @flow
    def run_split_with(which: str, run_dir: str) -> str:
        cfg = make_config(run_dir)
        chosen = original if which == "original" else edited
        return chosen(cfg, experiment_root(cfg), rows=1, return_state=True).name

    assert run_split_with("original", str(tmp_path)) == "Completed"
    assert run_split_with("original", str(tmp_path)) == "Cached"
    assert run_split_with("edited", str(tmp_path)) == "Completed"


@pytest.mark.slow
def test_list_result_with_one_missing_artifact_is_recomputed(prefect_harness, tmp_path):
    @flow
    def run_split(run_dir: str) -> tuple[str, list[Artifact]]:
        cfg = make_config(run_dir)
        state = split_task(cfg, experiment_root(cfg), rows=2, return_state=True)
        return state.name, state.result()

    name, parts = run_split(str(tmp_path))
    assert name == "Completed" and run_split(str(tmp_path))[0] == "Cached"
    os.remove(parts[1].path)
    assert run_split(str(tmp_path))[0] == "Completed"
    assert calls(experiment_root(make_config(str(tmp_path))), "split") == 2


@pytest.mark.slow
def test_gpu_stage_runs_in_a_fresh_process_only_with_gpus(prefect_harness, tmp_path):
    on_cpu = toy_pipeline(str(tmp_path / "cpu"))
    on_gpu = toy_pipeline(str(tmp_path / "gpu"), {"compute": {"num_gpus": 1}})
    cpu_pid = json.loads((Path(on_cpu["artifacts"]["model"].path) / "config.json").read_text())["pid"]
    gpu_pid = json.loads((Path(on_gpu["artifacts"]["model"].path) / "config.json").read_text())["pid"]
    assert cpu_pid == os.getpid() and gpu_pid != os.getpid()


@flow
def allocating_pipeline(run_dir: str, sizes: list[int], overrides: dict | None = None) -> str:
    cfg = make_config(run_dir, overrides)
    root = experiment_root(cfg)
    for megabytes in sizes:
        allocate_task(cfg, root, megabytes=megabytes)
    return root


@pytest.mark.slow
@pytest.mark.parametrize("gpus", [0, 1])
def test_each_computed_stage_records_its_own_peak_rss(prefect_harness, tmp_path, gpus):
    from mucode.orchestration import read_timings

    root = allocating_pipeline(str(tmp_path), [600, 8], {"compute": {"num_gpus": gpus}})
    big, small = read_timings(root)
    assert (big["stage"], small["stage"]) == ("allocate", "allocate")
    # Each stage's window starts afresh: the small stage does not inherit the big one's peak.
    assert big["peak_rss_gib"] >= small["peak_rss_gib"] + 0.5
    assert 0.05 < small["peak_rss_gib"] < big["peak_rss_gib"]
    allocating_pipeline(str(tmp_path), [600, 8], {"compute": {"num_gpus": gpus}})
    assert len(read_timings(root)) == 2  # cache hits record nothing


@pytest.mark.slow
def test_stage_table_and_progress_artifacts(prefect_harness, tmp_path):
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, FlowRunFilter, TaskRunFilter
    from prefect.client.schemas.sorting import ArtifactSort

    @flow
    def run_counted(run_dir: str):
        cfg = make_config(run_dir)
        generate_task(cfg, experiment_root(cfg), rows=3)
        counted_task(cfg, experiment_root(cfg), steps=250)

    state = run_counted(str(tmp_path), return_state=True)
    with get_client(sync_client=True) as client:
        # Every field explicitly: a server on FastAPI >= 0.151 rejects the nulls sent for omitted ones.
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])),
            flow_run_filter=FlowRunFilter(), task_run_filter=TaskRunFilter(), limit=200, offset=0,
            sort=ArtifactSort.CREATED_DESC)
    table = next(artifact for artifact in found if artifact.key == "toy-generate")
    rows = {row["field"]: row["value"] for row in json.loads(table.data)}
    assert rows["rows"] == 3 and rows["pass_rate"] == 0.5 and rows["loss"] == "2 → 0.25 (3 points)"
    progress = [artifact for artifact in found if artifact.type == "progress"]
    assert len(progress) == 1 and float(progress[0].data) == 100.0


@flow
def summarised_toy(run_dir: str, fail: bool = False) -> None:
    from mucode.run_summary import summarised_run

    cfg = make_config(run_dir)
    root = experiment_root(cfg)
    with summarised_run(cfg, root):
        generated = generate_task(cfg, root, rows=4)
        split_task(cfg, root, rows=2)
        if fail:
            raise RuntimeError("toy failure after two stages")
        label_task(cfg, root, source=generated)


@pytest.mark.slow
def test_every_flow_run_publishes_one_summary_of_all_its_stages_cached_or_not(prefect_harness, tmp_path):
    first = summarised_toy(str(tmp_path), return_state=True)
    second = summarised_toy(str(tmp_path), return_state=True)
    tables = {}
    for name, state in (("first", first), ("second", second)):
        [summary] = [artifact for artifact in flow_run_artifacts(state.state_details.flow_run_id)
                     if artifact.key == "toy-summary"]
        tables[name] = {row["stage"]: row for row in json.loads(summary.data)}
    assert list(tables["first"]) == ["generate", "split", "label"]
    assert {row["state"] for row in tables["first"].values()} == {"computed"}
    assert {row["state"] for row in tables["second"].values()} == {"cached"}  # a resumed run still lists them
    generate = tables["second"]["generate"]
    assert generate["rows"] == 4 and "pass_rate=0.5" in generate["key metrics"]
    assert generate["artifact"].endswith(".parquet") and Path(generate["artifact"]).is_file()
    assert tables["second"]["split"]["rows"] == 4 and ", " in tables["second"]["split"]["artifact"]  # two artifacts
    assert isinstance(tables["first"]["generate"]["wall s (this run)"], float)
    # The wall time a cached stage cost when it was computed comes from ROOT/timings.jsonl.
    assert isinstance(generate["wall s (computed)"], float)

    failed = summarised_toy(str(tmp_path / "other"), fail=True, return_state=True)
    assert failed.is_failed()
    [summary] = [artifact for artifact in flow_run_artifacts(failed.state_details.flow_run_id)
                 if artifact.key == "toy-summary"]
    assert [row["stage"] for row in json.loads(summary.data)] == ["generate", "split"]  # what ran before the failure


def test_stage_progress_outside_a_run_calls_no_api():
    with stage_progress(10, "nothing") as advance:
        advance(5, "")  # no server, no run context: must not raise or call the API


# -- subprocess and Dask -----------------------------------------------------------------------

def square_and_pid(value: int) -> tuple[int, int]:
    return value * value, os.getpid()


def fail_loudly(value: int) -> None:
    raise ValueError(f"bad value {value}")


def test_run_in_subprocess_returns_results_and_raises_errors():
    square, pid = run_in_subprocess(square_and_pid, 7)
    assert square == 49 and pid != os.getpid()
    with pytest.raises(ValueError, match="bad value 3"):
        run_in_subprocess(fail_loudly, 3)


def count_primes(bounds: tuple[int, int]) -> tuple[int, int]:
    low, high = bounds
    primes = sum(1 for n in range(max(low, 2), high) if all(n % d for d in range(2, int(n ** 0.5) + 1)))
    return primes, os.getpid()


def test_run_batches_in_process():
    batches = [(0, 100), (100, 200)]
    assert [count for count, _ in run_batches(count_primes, batches, None)] == [25, 21]


@pytest.mark.slow
def test_run_batches_on_a_local_dask_cluster(prefect_harness):
    from distributed import LocalCluster

    batches = [(i * 20_000, (i + 1) * 20_000) for i in range(6)]
    expected = [count for count, _ in run_batches(count_primes, batches, None)]

    @flow
    def fan_out(address: str) -> list:  # as a stage inside a flow run calls it
        return run_batches(count_primes, batches, address)

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        started = time.perf_counter()
        results = fan_out(cluster.scheduler_address)
        elapsed = time.perf_counter() - started
    assert [count for count, _ in results] == expected
    worker_pids = {pid for _, pid in results}
    assert os.getpid() not in worker_pids and 1 <= len(worker_pids) <= 2
    print(f"run_batches on 2 Dask workers: {len(batches)} batches in {elapsed:.2f} s")


def judge_batch(batch: list[tuple[str, str, str]]) -> list[tuple[str, bool]]:
    """Run (id, code, tests) programs in a local sandbox: what the execute stage fans out."""
    from mucode.sandbox import Program, make_sandbox

    with make_sandbox("local", workers=1, timeout_s=5.0) as sandbox:
        return [(verdict.id, verdict.passed) for verdict in sandbox.run([Program(*item) for item in batch])]


@pytest.mark.slow
def test_run_batches_runs_sandbox_programs_on_dask_workers(prefect_harness):
    from distributed import LocalCluster

    programs = [(f"p{i}", f"def f(x):\n    return x + {i % 2}", "assert f(1) == 2") for i in range(8)]
    batches = [programs[:4], programs[4:]]

    @flow
    def judge(address: str) -> list:
        return run_batches(judge_batch, batches, address)

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        verdicts = [verdict for batch in judge(cluster.scheduler_address) for verdict in batch]
    assert verdicts == [(f"p{i}", i % 2 == 1) for i in range(8)]
