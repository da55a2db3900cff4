"""Flow `mucode-stage`: re-run one named stage of a completed iteration, or one stage on artifacts given by path.

By name (the form in the UI): the stage's inputs are the artifacts the experiment's
`state.json` records for that iteration (and the one before it), so nothing is typed by hand.
`refresh` recomputes the stage even when its result is cached; `downstream` also re-runs every
later stage of the iteration and records the new artifacts in the state (the iterations after it
stay only if the generator and aggregate come out the same). `evaluate` and `report` evaluate the
iteration's generator and write the report, as `mucode-evaluate` does.

By path (advanced): `inputs` maps the stage's artifact parameters to stored paths and
`options` gives its other parameters; the stage runs on exactly those. Wiring only.
"""

from __future__ import annotations

from typing import Any, Literal

from prefect import flow, get_run_logger
from prefect.settings import PREFECT_TASKS_REFRESH_CACHE, temporary_settings

from mucode import tasks
from mucode.config import Config
from mucode.flows.evaluate import evaluate_and_report
from mucode.flows.experiment import ConfigChoice, IterationRecord, load_experiment, read_iterations
from mucode.flows.iteration import ITERATION_STAGES, PRODUCES, iteration_stage_task, run_iteration, stage_arguments
from mucode.orchestration import artifact_at
from mucode.run_summary import summarised_run

StageName = Literal["problems", "rollout", "execute", "aggregate", "verifier", "relabel", "finetune", "evaluate",
                    "report", "compare"]


@flow(name="mucode-stage", log_prints=True)
def mucode_stage(stage: StageName, config: ConfigChoice = "configs/smoke.yaml", overrides: list[str] | None = None,
                 iteration: int | None = None, refresh: bool = False, downstream: bool = False,
                 inputs: dict[str, str | list[str] | None] | None = None,
                 options: dict[str, Any] | None = None) -> str:
    """Re-run one stage of a completed iteration, its inputs read from the experiment's state.json.

    Args:
        stage: the stage to run (docs/architecture.md lists each one's parameters).
        config: a config of configs/, or the path of another YAML config relative to the repository.
        overrides: `section.key=value` strings applied on top of the config.
        iteration: the completed iteration whose stage to re-run; empty = the latest.
        refresh: recompute even when the result is cached.
        downstream: also re-run every later stage of the iteration and record the new artifacts in state.json.
        inputs: advanced, instead of the iteration: the stage's artifact parameters, name → artifact path
            (a list of paths for report's `evaluations`, null for none), e.g.
            {"rollouts": "runs/smoke/artifacts/rollout/ab12.parquet"}.
        options: advanced, with inputs: the stage's other parameters, e.g. {"iteration": 1} or
            {"dataset": "mbpp", "split": "train", "limit": 4}.

    Returns:
        The path(s) of what the stage produced.
    """
    cfg, root = load_experiment(config, overrides)
    with summarised_run(cfg, root):
        if inputs is not None or options is not None:
            return run_on_paths(cfg, root, stage, inputs or {}, options or {}, refresh)
        return rerun_in_iteration(cfg, root, stage, iteration, refresh, downstream)


def run_on_paths(cfg: Config, root: str, stage: str, inputs: dict[str, Any], options: dict[str, Any],
                 refresh: bool) -> str:
    artifacts = {name: _references(value, root) for name, value in inputs.items()}
    task = tasks.stage_task(stage)
    result = (task.with_options(refresh_cache=True) if refresh else task)(cfg, root, **artifacts, **options)
    return _paths(result)


def chosen_iteration(root: str, iteration: int | None) -> tuple[IterationRecord, IterationRecord | None]:
    """The completed iteration asked for (the latest when None) and the one before it."""
    records = {record.iteration: record for record in read_iterations(root)}
    chosen = max(records) if iteration is None and records else iteration
    if chosen not in records:
        completed = sorted(records) or "none"
        raise ValueError(f"iteration {chosen} of {root} has not completed (completed: {completed}): run "
                         "mucode-iteration first, or pick a completed one")
    return records[chosen], records.get(chosen - 1)


def rerun_in_iteration(cfg: Config, root: str, stage: str, iteration: int | None, refresh: bool,
                       downstream: bool) -> str:
    logger = get_run_logger()
    if stage == "problems" and not downstream:  # read from the config alone: no iteration needs to exist
        return _paths(iteration_stage_task(stage, refresh=refresh)(cfg, root, **stage_arguments(cfg, stage, {}, None, 0)))
    record, previous = chosen_iteration(root, iteration)
    if stage in ("evaluate", "report"):
        logger.info("evaluating iteration %d's generator", record.iteration)
        with temporary_settings({PREFECT_TASKS_REFRESH_CACHE: refresh}):
            return evaluate_and_report(cfg, root, record.generator, record.verifier)
    if stage not in ITERATION_STAGES:
        raise ValueError(f"stage {stage} is not part of an iteration: run mucode-compare, or give its inputs "
                         "and options by path")
    if downstream:
        later = ITERATION_STAGES[ITERATION_STAGES.index(stage):]
        logger.info("iteration %d: re-running %s%s", record.iteration, " → ".join(later),
                    " (recomputed even when cached)" if refresh else "")
        rerun = run_iteration(cfg, root, record.iteration, previous, refresh=later if refresh else ())
        return str(getattr(rerun, PRODUCES[stage]) or "")
    made = {name: getattr(record, name) for name in PRODUCES.values()}
    arguments = stage_arguments(cfg, stage, made, previous, record.iteration)
    missing = [name for name in ("rollouts", "labelled") if name in arguments and arguments[name] is None]
    if missing:
        raise ValueError(f"{root}/state.json has no {missing[0]} for iteration {record.iteration} (written before "
                         "they were recorded): re-run it with downstream from rollout")
    logger.info("iteration %d: re-running %s on the artifacts state.json records", record.iteration, stage)
    return _paths(iteration_stage_task(stage, refresh=refresh)(cfg, root, **arguments))


def _paths(result: Any) -> str:
    return ", ".join(map(str, result)) if isinstance(result, list) else str(result)


def _references(value: str | list[str] | None, root: str) -> Any:
    if value is None:
        return None
    if isinstance(value, list):
        return [artifact_at(path, root) for path in value]
    return artifact_at(value, root)
