"""Flow `mucode-stage`: one named stage on input artifacts given by path.

For re-running or debugging a single stage (e.g. re-labelling stored rollouts with another
sandbox) from the UI or `run_deployment`. The stage's task is the same cached task the
other flows use, so an identical call is a cache hit. Wiring only.
"""

from __future__ import annotations

from typing import Any, Literal

from prefect import flow

from mucode import tasks
from mucode.flows.experiment import load_experiment
from mucode.orchestration import artifact_at

StageName = Literal["problems", "rollout", "execute", "aggregate", "verifier", "relabel", "finetune", "evaluate",
                    "report", "compare"]


@flow(name="mucode-stage", log_prints=True)
def mucode_stage(stage: StageName, inputs: dict[str, str | list[str] | None] | None = None,
                 options: dict[str, Any] | None = None, config: str = "configs/smoke.yaml",
                 overrides: list[str] | None = None) -> str:
    """Run one stage on stored artifacts.

    Args:
        stage: the stage to run (docs/architecture.md lists each one's parameters).
        inputs: the stage's artifact parameters, name → artifact path (a list of paths for
            report's `evaluations`, null for none), e.g. {"rollouts": "runs/smoke/artifacts/rollout/ab12.parquet"}.
        options: the stage's other parameters, e.g. {"iteration": 1} or
            {"dataset": "mbpp", "split": "train", "limit": 4}.
        config: path of a YAML config, relative to the repository.
        overrides: `section.key=value` strings applied on top of the config.

    Returns:
        The path(s) of what the stage produced.
    """
    cfg, root = load_experiment(config, overrides)
    artifacts = {name: _references(value, root) for name, value in (inputs or {}).items()}
    result = tasks.stage_task(stage)(cfg, root, **artifacts, **(options or {}))
    return ", ".join(map(str, result)) if isinstance(result, list) else str(result)


def _references(value: str | list[str] | None, root: str) -> Any:
    if value is None:
        return None
    if isinstance(value, list):
        return [artifact_at(path, root) for path in value]
    return artifact_at(value, root)
