"""prefect.yaml against a real `prefect server start` and a real process worker.

`prefect deploy --all` registers every deployment; runs are then triggered through the API
as the UI does (`run_deployment`), picked up by the worker (scripts/prefect-server.sh) and
run in the repository; the nightly schedule and the parameter forms are read back.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from prefect_support import (PREFECT, REPO, TINY_EVALUATION, api, flow_run_artifacts, smoke_overrides,
                             task_run_states)


@pytest.fixture(scope="module")
def deployed(prefect_server):
    started = time.perf_counter()
    done = subprocess.run([*PREFECT, "--no-prompt", "deploy", "--all"], cwd=REPO, env=prefect_server,
                          capture_output=True, text=True, timeout=600)
    if done.returncode != 0 and "422 Unprocessable Entity" in done.stdout + done.stderr:
        pytest.fail("prefect deploy got 422 from the server: its FastAPI is >= 0.151, which rejects the nulls "
                    "Prefect 3.8.8 sends; pin fastapi<0.151 (docs/orchestration.md, Known issue)")
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    print(f"prefect deploy --all: {time.perf_counter() - started:.1f} s")
    return prefect_server


@pytest.mark.server
def test_deployments_schedule_and_parameter_forms(deployed):
    from prefect import get_client

    with api(deployed), get_client(sync_client=True) as client:
        iteration = client.read_deployment_by_name("mucode-iteration/process")
        train = client.read_deployment_by_name("mucode-train/process")
        stage = client.read_deployment_by_name("mucode-stage/process")
        docker = client.read_deployment_by_name("mucode-train/docker")
        compare = client.read_deployment_by_name("mucode-compare/process")
    [schedule] = iteration.schedules
    assert schedule.schedule.cron == "0 2 * * *" and schedule.schedule.timezone == "UTC" and schedule.active
    assert train.work_pool_name == "mucode-process" and docker.work_pool_name == "mucode-docker"
    assert docker.job_variables["image"] == "mucode-trainer:latest"
    assert train.pull_steps == [{"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}]
    form = train.parameter_openapi_schema["properties"]
    # config: a drop-down of configs/*.yaml, read when `prefect deploy` loads the flow, or any other path.
    choices, free = form["config"]["anyOf"]
    assert choices["enum"] == sorted(f"configs/{path.name}" for path in (REPO / "configs").glob("*.yaml"))
    assert free == {"type": "string", "title": "another path"} and form["config"]["default"] == "configs/smoke.yaml"
    assert {"type": "array", "items": {"type": "string"}} in form["overrides"]["anyOf"]
    assert form["config"]["description"].startswith("a config of configs/")
    from mucode.tasks import STAGES

    stage_form = stage.parameter_openapi_schema["properties"]
    assert stage_form["stage"]["enum"] == list(STAGES)  # a drop-down in the UI
    assert stage_form["refresh"] == {"type": "boolean", "default": False, "title": "refresh", "position": 4,
                                     "description": "recompute even when the result is cached."}
    assert {"type": "integer"} in stage_form["iteration"]["anyOf"] and stage_form["iteration"]["default"] is None
    assert compare.parameter_openapi_schema["properties"]["config"]["default"] == "configs/compare-cpu.yaml"
    assert compare.parameters["config"] == "configs/compare-cpu.yaml"


@pytest.mark.server
@pytest.mark.slow
def test_triggered_evaluate_run_completes_with_artifacts_and_retries_from_cache(deployed, tmp_path):
    from prefect import get_client

    parameters = {"config": "configs/smoke.yaml", "overrides": [f"run_dir={tmp_path}", *TINY_EVALUATION],
                  "iteration": 0}
    with api(deployed):
        flow_run = run_to_completion("mucode-evaluate/process", parameters, 1200,
                                     "mucode-evaluate via deployment and process worker")
        artifacts = {artifact.key: artifact.type for artifact in flow_run_artifacts(flow_run.id) if artifact.key}
        assert artifacts["smoke-evaluate-base"] == "table"  # the stage table of mucode.orchestration
        assert "markdown" in {kind for key, kind in artifacts.items() if key.endswith("-report")}  # the report
        assert list(Path(tmp_path, "smoke").glob("**/report.md"))

        # `prefect flow-run retry` on a deployed run: the worker runs it again, from the cache.
        retry = subprocess.run([*PREFECT, "flow-run", "retry", str(flow_run.id)], cwd=REPO, env=deployed,
                               capture_output=True, text=True, timeout=120)
        assert retry.returncode == 0, (retry.stdout + retry.stderr)[-2000:]
        started = time.perf_counter()
        with get_client(sync_client=True) as client:
            state = client.read_flow_run(flow_run.id).state
            while not (state.is_final() and state.timestamp > flow_run.state.timestamp):
                assert time.perf_counter() - started < 600, f"retried run stuck in {state.name}"
                time.sleep(1)
                state = client.read_flow_run(flow_run.id).state
        assert state.is_completed(), state
        print(f"retried deployed run: {time.perf_counter() - started:.1f} s")
    # Task runs of the same flow run, latest per name: the retry's, every one a cache hit.
    with api(deployed):
        assert set(task_run_states(str(flow_run.id)).values()) == {"Cached"}


def run_to_completion(name: str, parameters: dict, timeout: int, what: str):
    """Trigger deployment `name` as the UI does, wait for it, assert Completed and print its wall time."""
    from prefect.deployments import run_deployment

    started = time.perf_counter()
    flow_run = run_deployment(name, parameters=parameters, timeout=timeout)
    assert flow_run.state.is_completed(), flow_run.state
    print(f"{what}: {time.perf_counter() - started:.1f} s")
    return flow_run


@pytest.mark.server
def test_triggered_stage_run_writes_its_artifact(deployed, tmp_path):
    parameters = {"stage": "problems", "options": {"dataset": "mbpp", "split": "train", "limit": 2},
                  "overrides": [f"run_dir={tmp_path}"]}
    with api(deployed):
        run_to_completion("mucode-stage/process", parameters, 600, "mucode-stage (problems) via deployment")
    [stored] = Path(tmp_path, "smoke", "artifacts", "problems").glob("*.parquet")
    assert stored.stat().st_size > 0


@pytest.mark.server
@pytest.mark.docker
@pytest.mark.slow
def test_smoke_iteration_runs_to_completion_in_the_docker_deployment(deployed):
    """mucode-iteration/docker: the docker worker of scripts/prefect-server.sh runs the flow in a
    container of mucode-trainer:latest (containers/build-trainer.sh), results in the mucode-runs volume."""
    done = subprocess.run(["docker", "image", "inspect", "mucode-trainer:latest"], capture_output=True)
    if done.returncode != 0:
        pytest.fail("image mucode-trainer:latest is missing: bash containers/build-trainer.sh")
    run_dir = f"/opt/mucode/runs/test-{time.time_ns()}"  # inside the container, in the volume
    parameters = {"config": "configs/smoke.yaml", "overrides": smoke_overrides(run_dir, nightly=True)}
    with api(deployed):
        flow_run = run_to_completion("mucode-iteration/docker", parameters, 3600,
                                     "smoke mucode-iteration via the docker deployment")
        artifacts = artifacts_by_key(flow_run.id)
    summary = {row["stage"]: row for row in json.loads(artifacts["smoke-summary"].data)}
    assert {"problems-mbpp", "rollout-1", "execute", "aggregate-1", "verifier", "relabel"} <= set(summary)
    assert all(row["artifact"].startswith(run_dir) for row in summary.values() if row["artifact"])
    nightly = artifacts["smoke-nightly"].data
    assert "| this |" in nightly and "| base |" in nightly and "Verifier held-out AUC" in nightly


@pytest.mark.server
@pytest.mark.slow
def test_stage_by_name_reruns_from_state_and_downstream_from_cache(deployed, tmp_path):
    """mucode-stage by name: inputs from state.json, `refresh` recomputes one stage, `downstream`
    from problems re-runs the whole iteration (all cache hits) and records it again."""
    from prefect.deployments import run_deployment

    overrides = smoke_overrides(tmp_path)
    state_file = Path(tmp_path, "smoke", "state.json")
    with api(deployed):
        first = run_deployment("mucode-iteration/process", parameters={"overrides": overrides}, timeout=3600)
        assert first.state.is_completed(), first.state
        recorded = json.loads(state_file.read_text())["iterations"][0]
        assert recorded["rollouts"] and recorded["labelled"]  # what a by-name execute/aggregate reads

        refreshed = run_deployment("mucode-stage/process", timeout=1200, parameters={
            "stage": "aggregate", "overrides": overrides, "refresh": True})
        assert refreshed.state.is_completed(), refreshed.state
        [row] = json.loads(artifacts_by_key(refreshed.id)["smoke-summary"].data)
        assert row["stage"] == "aggregate-1" and row["state"] == "computed"
        assert row["artifact"] == recorded["aggregated"]["path"]  # same inputs, same bytes, same artifact

        started = time.perf_counter()
        rerun = run_deployment("mucode-stage/process", timeout=1200, parameters={
            "stage": "problems", "overrides": overrides, "downstream": True})
        elapsed = time.perf_counter() - started
        assert rerun.state.is_completed(), rerun.state
        print(f"cached re-run of a whole smoke iteration (mucode-stage problems, downstream), submit to Completed: "
              f"{elapsed:.1f} s")
        summary = json.loads(artifacts_by_key(rerun.id)["smoke-summary"].data)
    assert [row["stage"] for row in summary] == ["problems-mbpp", "rollout-1", "execute", "aggregate-1", "verifier",
                                                 "relabel", "finetune"]
    assert {row["state"] for row in summary} == {"cached"}
    assert json.loads(state_file.read_text())["iterations"][0]["generator"] == recorded["generator"]


def artifacts_by_key(flow_run_id) -> dict:
    return {artifact.key: artifact for artifact in flow_run_artifacts(flow_run_id) if artifact.key}
