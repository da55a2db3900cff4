"""Helpers shared by the tests that run flows: a real server's environment, a fresh
interpreter in the repository, reading task-run states and artifacts back, toy configs.

The fixtures that start servers live in conftest.py; this module starts nothing.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from mucode.config import Config, apply_overrides, parse_config

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
PYTHON = sys.executable
# `python -m prefect`: a copied venv's console scripts can name another interpreter (and its mucode).
PREFECT = [str(REPO / ".venv" / "bin" / "python"), "-m", "prefect"]
SMOKE = "configs/smoke.yaml"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def server_env(home: Path, port: int) -> dict[str, str]:
    return {**os.environ, "PREFECT_HOME": str(home), "MUCODE_PREFECT_PORT": str(port),
            "PREFECT_API_URL": f"http://127.0.0.1:{port}/api", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
            "PREFECT_WORKER_QUERY_SECONDS": "2"}  # the worker picks up triggered runs quickly


def api(env: dict[str, str]):
    """Prefect settings pointing this process at the test server of `env`."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    return temporary_settings({PREFECT_API_URL: env["PREFECT_API_URL"]})


def python_command(code: str) -> list[str]:
    """A fresh interpreter running `code` with the tests importable (run it with cwd=REPO)."""
    return [PYTHON, "-c", f"import sys; sys.path.insert(0, {str(TESTS)!r})\n" + code]


def run_python(code: str, env: dict[str, str], timeout: float = 900) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter in the repository, with the tests importable."""
    return subprocess.run(python_command(code), env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def last_json_line(output: str) -> dict:
    return json.loads([line for line in output.splitlines() if line.startswith("{")][-1])


def task_run_states(flow_run_id) -> dict[str, str]:
    """Task run name → state name of one flow run, from the server this process points at."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, TaskRunFilter
    from prefect.client.schemas.sorting import TaskRunSort

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
                                     task_run_filter=TaskRunFilter(), limit=200, offset=0,
                                     sort=TaskRunSort.EXPECTED_START_TIME_ASC)
    return {run.name: run.state.name for run in runs}


def flow_run_artifacts(flow_run_id) -> list:
    """Every artifact of one flow run, its stages' and its own (the summary), newest first."""
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, FlowRunFilter
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        # No task run filter: with one (even empty) the server leaves out artifacts made by the flow itself.
        return client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])),
            flow_run_filter=FlowRunFilter(), limit=200, offset=0, sort=ArtifactSort.CREATED_DESC)


def make_config(run_dir: str, overrides: dict | None = None) -> Config:
    """The default config with its runs under `run_dir` (the toy stages' experiments)."""
    return parse_config(apply_overrides({"run_dir": run_dir, "name": "toy"}, overrides or {}))


# The smallest evaluation the flows run: one HumanEval problem, one candidate, one turn.
TINY_EVALUATION = ["data.eval_datasets=[humaneval]", "data.eval_limit=1", "evaluation.n=1", "evaluation.turns=1",
                   "evaluation.searches=1", "evaluation.scaling_ns=[1]", "evaluation.sampling.max_new_tokens=32"]
# smoke.yaml cut down for the tests of orchestration (caching, kill and resume, deployments): every
# stage still runs for real on the bundled model, and still trains it (the fine-tune's peak RSS is
# the 135M model's with its AdamW state), on 2 problems x 1 rollout x 2 turns of 32 new tokens.
TINY_SMOKE = ["data.train_limit=2", "rollout.num_rollouts=1", "rollout.sampling.max_new_tokens=32",
              "verifier.max_length=256", "finetune.max_length=384", *TINY_EVALUATION, "nightly.limit=1",
              # BT finds no (passing, failing) pair among so few answers of a 135M model (VerifierInputError).
              "verifier.loss=bce"]


def smoke_overrides(run_dir: Path | str, nightly: bool = False) -> list[str]:
    """TINY_SMOKE with runs under `run_dir`. Nightly off by default: most tests count the
    iteration's own stages (the nightly report has its own test)."""
    return [f"run_dir={run_dir}", *TINY_SMOKE, f"nightly.enabled={str(nightly).lower()}"]


def log_call(root: str, stage: str) -> None:
    """A toy stage's proof that it really ran: one line per call in its experiment directory."""
    Path(root).mkdir(parents=True, exist_ok=True)
    with open(Path(root) / f"calls-{stage}.log", "a") as log:
        log.write(f"{os.getpid()}\n")


def calls(root: str, stage: str) -> int:
    log = Path(root) / f"calls-{stage}.log"
    return len(log.read_text().splitlines()) if log.exists() else 0
