"""The flows: resume after a real kill, `prefect flow-run retry`, and cached smoke re-runs.

Flows that must survive a process run in subprocesses against a real `prefect server start`
(scripts/prefect-server.sh, on a free port, with a private PREFECT_HOME); results persist
in that PREFECT_HOME, so a second process finds the first one's cache. The toy stages
below prove the mechanism; the smoke tests run the real stages of tasks/.
"""

from __future__ import annotations

import datetime
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import polars as pl
import pytest
from prefect import flow

from mucode.artifacts import Artifact, ArtifactStore
from mucode.attempts import ATTEMPTS_DIR, HEARTBEAT_S
from mucode.orchestration import experiment_root, read_timings, stage_task
from prefect_support import (PYTHON, REPO, SMOKE, api, calls, last_json_line, log_call, make_config, python_command,
                             run_python, smoke_overrides, task_run_states)


# -- toy stages: each logs its calls in the experiment directory -----------------------------

def toy_rollout(cfg, root: str, iteration: int) -> Artifact:
    log_call(root, "rollout")
    frame = pl.DataFrame({"task_id": ["a", "b", "c"], "iteration": [iteration] * 3})
    return ArtifactStore(root).put_frame(frame, stage="rollout")


def toy_verifier(cfg, root: str, aggregated: Artifact) -> Artifact:
    log_call(root, "verifier")
    store = ArtifactStore(root)
    scored = store.get_frame(aggregated).with_columns(pl.lit(0.5).alias("score"))
    return store.put_frame(scored, stage="verifier", inputs=[aggregated.hash])


def toy_finetune(cfg, root: str, sft: Artifact) -> Artifact:
    log_call(root, "finetune")
    (Path(root) / "finetune-started").touch()
    hang = Path(root) / "hang-finetune"
    while hang.exists():  # the kill test holds the stage here until it kills the process
        time.sleep(0.1)
    store = ArtifactStore(root)
    folder = Path(root) / "scratch-generator"
    folder.mkdir(exist_ok=True)
    (folder / "model.safetensors").write_bytes(bytes(store.get_frame(sft).height) * 100)
    return store.put_dir(folder, stage="finetune", inputs=[sft.hash])


def toy_flaky(cfg, root: str, source: Artifact) -> Artifact:
    log_call(root, "flaky")
    if (Path(root) / "broken").exists():
        raise RuntimeError("toy stage failure (the file 'broken' exists)")
    return ArtifactStore(root).put_frame(pl.DataFrame({"ok": [True]}), stage="flaky", inputs=[source.hash])


toy_rollout_task = stage_task(toy_rollout, name="rollout", sections=("rollout",))
toy_verifier_task = stage_task(toy_verifier, name="verifier", sections=("verifier",), gpu=True)
toy_finetune_task = stage_task(toy_finetune, name="finetune", sections=("finetune",), gpu=True)
toy_flaky_task = stage_task(toy_flaky, name="flaky", sections=())


@flow(name="toy-iteration")
def toy_iteration(run_dir: str) -> dict[str, str]:
    cfg = make_config(run_dir)
    root = experiment_root(cfg)
    rollouts = toy_rollout_task(cfg, root, iteration=1, return_state=True)
    verifier = toy_verifier_task(cfg, root, aggregated=rollouts.result(), return_state=True)
    generator = toy_finetune_task(cfg, root, sft=verifier.result(), return_state=True)
    return {"rollout": rollouts.name, "verifier": verifier.name, "finetune": generator.name}


@flow(name="toy-flaky")
def toy_flaky_pipeline(run_dir: str) -> None:
    cfg = make_config(run_dir)
    root = experiment_root(cfg)
    toy_flaky_task(cfg, root, source=toy_rollout_task(cfg, root, iteration=1))  # a failure fails the flow


RUN_TOY_ITERATION = """
import json, test_flows
print(json.dumps(test_flows.toy_iteration(run_dir={run_dir!r})))
"""


# -- the experiment state file --------------------------------------------------------------

def _record(store: ArtifactStore, iteration: int, seed: int):
    from mucode.flows.experiment import IterationRecord

    artifact = store.put_frame(pl.DataFrame({"seed": [seed]}), stage="any")
    return IterationRecord(iteration=iteration, problems=artifact, aggregated=artifact, verifier=artifact,
                           sft=artifact, generator=artifact, config_digest="c")


def test_state_file_records_iterations_atomically(tmp_path):
    from mucode.flows.experiment import latest_iteration, read_iterations, record_iteration

    store = ArtifactStore(tmp_path)
    assert latest_iteration(str(tmp_path)) is None
    for iteration in (1, 2, 3):
        record_iteration(str(tmp_path), _record(store, iteration, seed=iteration))
    assert [record.iteration for record in read_iterations(str(tmp_path))] == [1, 2, 3]
    assert latest_iteration(str(tmp_path)).generator == _record(store, 3, seed=3).generator
    assert latest_iteration(str(tmp_path)).completed  # stamped when recorded
    assert not list(tmp_path.glob(".tmp-*"))  # written beside, then renamed over
    # Re-recording iteration 1 with the same data (a cached re-run) keeps what built on it...
    record_iteration(str(tmp_path), _record(store, 1, seed=1))
    assert [record.iteration for record in read_iterations(str(tmp_path))] == [1, 2, 3]
    # ...with different data it drops iterations 2 and 3: they continued the old one.
    record_iteration(str(tmp_path), _record(store, 1, seed=99))
    assert [record.iteration for record in read_iterations(str(tmp_path))] == [1]


def test_unreadable_state_file_is_one_clear_error(tmp_path):
    from mucode.flows.experiment import read_iterations

    (tmp_path / "state.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"state.json is unreadable .*delete it and re-run mucode-train"):
        read_iterations(str(tmp_path))


# -- toy flows in real processes -----------------------------------------------------------

@pytest.mark.server
def test_killed_run_resumes_from_the_killed_stage(prefect_server, tmp_path):
    root = experiment_root(make_config(str(tmp_path)))
    Path(root).mkdir(parents=True)
    (Path(root) / "hang-finetune").touch()
    log = open(tmp_path / "killed-run.log", "w")  # a file, not a pipe nobody reads: it never fills up
    process = subprocess.Popen(python_command(RUN_TOY_ITERATION.format(run_dir=str(tmp_path))),
                               env=prefect_server, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while not (Path(root) / "finetune-started").exists():
        assert process.poll() is None and time.monotonic() < deadline, "the flow never reached finetune"
        time.sleep(0.1)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    log.close()
    assert process.returncode == -signal.SIGKILL
    assert [calls(root, stage) for stage in ("rollout", "verifier", "finetune")] == [1, 1, 1]

    (Path(root) / "hang-finetune").unlink()
    started = time.perf_counter()
    resumed = run_python(RUN_TOY_ITERATION.format(run_dir=str(tmp_path)), prefect_server)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    print(f"resume after kill: {time.perf_counter() - started:.1f} s")
    assert last_json_line(resumed.stdout) == {"rollout": "Cached", "verifier": "Cached", "finetune": "Completed"}
    assert [calls(root, stage) for stage in ("rollout", "verifier", "finetune")] == [1, 1, 2]

    # A deleted artifact is recomputed; its content is unchanged, so what follows stays cached.
    verifier_artifact = next(Path(root, "artifacts", "verifier").glob("*.parquet"))
    verifier_artifact.unlink()
    again = run_python(RUN_TOY_ITERATION.format(run_dir=str(tmp_path)), prefect_server)
    assert again.returncode == 0, again.stderr[-3000:]
    assert last_json_line(again.stdout) == {"rollout": "Cached", "verifier": "Completed", "finetune": "Cached"}
    assert verifier_artifact.exists()


@pytest.mark.server
def test_flow_run_retry_recomputes_only_the_failed_stage(prefect_server, tmp_path):
    root = experiment_root(make_config(str(tmp_path)))
    Path(root).mkdir(parents=True)
    (Path(root) / "broken").touch()
    failed = run_python(f"""
import json, test_flows
state = test_flows.toy_flaky_pipeline(run_dir={str(tmp_path)!r}, return_state=True)
print(json.dumps({{"id": str(state.state_details.flow_run_id), "state": state.name}}))
""", prefect_server)
    outcome = last_json_line(failed.stdout)
    assert outcome["state"] == "Failed" and calls(root, "flaky") == 1

    (Path(root) / "broken").unlink()
    retry = subprocess.run([str(REPO / ".venv" / "bin" / "prefect"), "flow-run", "retry", outcome["id"],
                            "--entrypoint", "tests/test_flows.py:toy_flaky_pipeline"],
                           env=prefect_server, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert retry.returncode == 0, (retry.stdout + retry.stderr)[-3000:]
    assert [calls(root, "rollout"), calls(root, "flaky")] == [1, 2]
    # The retry re-ran the same flow run: its task runs now end Cached (rollout) and Completed (flaky).
    assert _states_on(prefect_server, outcome["id"]) == {"rollout-1": "Cached", "flaky": "Completed"}


# -- the real stages ----------------------------------------------------------------------------

def test_train_command_rejects_a_bad_config_in_one_line(tmp_path):
    command = [PYTHON, "-m", "mucode.flows.train", "--config", SMOKE, "--override", "rollout.num_rolouts=2"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: configs/smoke.yaml: unknown key 'rollout.num_rolouts': remove it or check its spelling "
        "against mucode/config.py"]


@pytest.mark.slow
def test_smoke_train_rerun_is_all_cache_hits(prefect_harness, tmp_path):
    from mucode.flows.train import mucode_train

    started = time.perf_counter()
    first = mucode_train(config=SMOKE, overrides=smoke_overrides(tmp_path), return_state=True)
    first_s = time.perf_counter() - started
    started = time.perf_counter()
    second = mucode_train(config=SMOKE, overrides=smoke_overrides(tmp_path), return_state=True)
    second_s = time.perf_counter() - started
    assert first.is_completed() and second.is_completed()
    assert Path(first.result()).is_file() and second.result() == first.result()
    states = task_run_states(second.state_details.flow_run_id)
    print(f"smoke mucode-train: first run {first_s:.1f} s, cached re-run {second_s:.1f} s; re-run states {states}")
    stages = {name.split("-")[0] for name in states}
    assert {"problems", "rollout", "execute", "aggregate", "verifier", "relabel", "finetune", "evaluate",
            "report"} <= stages
    assert set(states.values()) == {"Cached"}
    timings = read_timings(str(tmp_path / "smoke"))  # the first run's computed stages only
    assert {"rollout", "verifier", "finetune", "evaluate"} <= {record["stage"] for record in timings}
    assert all(record["peak_rss_gib"] > 0 for record in timings)
    peaks = {record["stage"]: record["peak_rss_gib"] for record in timings}
    assert peaks["finetune"] > 0.5  # a 135M model with AdamW state cannot train in less
    print("peak RSS per stage (GiB):", peaks)


RUN_SMOKE_ITERATION = """
import json
from mucode.flows.iteration import mucode_iteration
state = mucode_iteration(config={config!r}, overrides={overrides!r}, return_state=True)
print(json.dumps({{"id": str(state.state_details.flow_run_id), "state": state.name}}))
"""


@pytest.mark.server
@pytest.mark.slow
def test_smoke_iteration_killed_in_finetune_resumes_without_redoing_rollouts_or_verifier(prefect_server, tmp_path):
    code = RUN_SMOKE_ITERATION.format(config=SMOKE, overrides=smoke_overrides(tmp_path))
    since = datetime.datetime.now(datetime.timezone.utc).isoformat()
    started = time.perf_counter()
    log = open(tmp_path / "killed-run.log", "w")  # a file, not a pipe nobody reads: it never fills up
    process = subprocess.Popen(python_command(code), env=prefect_server, cwd=REPO, stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=True)
    killed_id = _wait_for_running_task(prefect_server, process, "finetune", since, timeout=1800)
    _wait_for_heartbeat(process, tmp_path / "smoke", "finetune", timeout=600)
    print(f"smoke iteration reached finetune after {time.perf_counter() - started:.1f} s: killing it")
    os.killpg(process.pid, signal.SIGKILL)  # the flow process and any stage subprocess it started
    process.wait(timeout=30)
    log.close()
    assert _states_on(prefect_server, killed_id)["finetune"] == "Running"  # nobody told the server

    started = time.perf_counter()
    resumed = run_python(code, prefect_server, timeout=3600)
    resumed_s = time.perf_counter() - started
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    outcome = last_json_line(resumed.stdout)
    states = _states_on(prefect_server, outcome["id"])
    print(f"smoke iteration resumed in {resumed_s:.1f} s; task runs {states}")
    assert outcome["state"] == "Completed"
    assert states == {"problems-mbpp": "Cached", "rollout-1": "Cached", "execute": "Cached", "aggregate-1": "Cached",
                      "verifier": "Cached", "relabel": "Cached", "finetune": "Completed"}
    # The finetune's cost counts the killed attempt too (mucode.attempts).
    finetune = [record for record in read_timings(str(tmp_path / "smoke")) if record["stage"] == "finetune"]
    assert len(finetune) == 1 and finetune[0]["unfinished_s"] >= HEARTBEAT_S


def _wait_for_running_task(env: dict[str, str], process: subprocess.Popen, task_name: str, since: str,
                           timeout: float) -> str:
    """Poll the server until a task run named task_name*, started after `since`, is Running; returns its flow run.

    `since` leaves out task runs of earlier killed processes, which stay Running on the server.
    """
    from prefect import get_client
    from prefect.client.schemas.filters import (FlowRunFilter, TaskRunFilter, TaskRunFilterName,
                                                TaskRunFilterStartTime, TaskRunFilterState, TaskRunFilterStateName)
    from prefect.client.schemas.sorting import TaskRunSort

    running = TaskRunFilter(name=TaskRunFilterName(like_=task_name),
                            state=TaskRunFilterState(name=TaskRunFilterStateName(any_=["Running"])),
                            start_time=TaskRunFilterStartTime(after_=datetime.datetime.fromisoformat(since)))
    deadline = time.monotonic() + timeout
    # In this process: a fresh interpreter per poll took seconds of the stage's time to start.
    with api(env), get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            assert process.poll() is None, "the flow ended before reaching " + task_name
            runs = client.read_task_runs(task_run_filter=running, flow_run_filter=FlowRunFilter(), limit=10,
                                         offset=0, sort=TaskRunSort.EXPECTED_START_TIME_ASC)
            if runs:
                return str(runs[0].flow_run_id)
            time.sleep(0.5)
    raise AssertionError(f"no {task_name} task run started within {timeout} s")


def _wait_for_heartbeat(process: subprocess.Popen, root: Path, stage: str, timeout: float) -> None:
    """Wait until the running attempt of `stage` has kept a heartbeat HEARTBEAT_S after its start
    (mucode.attempts): a kill then leaves at least that much unfinished time behind."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the flow ended before {stage} kept a heartbeat"
        for path in (root / ATTEMPTS_DIR).glob("*.json"):
            try:
                record = json.loads(path.read_text())
            except (OSError, ValueError):
                continue  # being replaced
            if record["stage_run"].startswith(f"{stage}/") and record["alive"] - record["started"] >= HEARTBEAT_S:
                return
        time.sleep(0.2)
    raise AssertionError(f"{stage} kept no heartbeat within {timeout} s")


def _states_on(env: dict[str, str], flow_run_id: str) -> dict[str, str]:
    with api(env):
        return task_run_states(flow_run_id)
