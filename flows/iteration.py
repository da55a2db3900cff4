"""Flow `mucode-iteration`: the next µCode iteration of a named experiment.

`run_iteration` wires one iteration i: problems → rollout (generator of iteration i-1, the
base model at i=1) → execute → aggregate (with the previous aggregate) → verifier →
relabel → finetune, and records it in the experiment's state file. `mucode-train` (and a
future `mucode-compare`, one call per arm on a shared experiment directory) reuse it. Wiring
only: the stages live in tasks/, caching and retries in mucode.orchestration.
"""

from __future__ import annotations

from prefect import flow, get_run_logger

from mucode.artifacts import ArtifactStore
from mucode.config import Config
from mucode.flows.experiment import IterationRecord, latest_iteration, load_experiment, record_iteration
from mucode.tasks.aggregate import aggregate_task
from mucode.tasks.execute import execute_task
from mucode.tasks.finetune import finetune_task
from mucode.tasks.problems import problems_task
from mucode.tasks.relabel import relabel_task
from mucode.tasks.rollout import rollout_task
from mucode.tasks.verifier import verifier_task


def run_iteration(cfg: Config, root: str, iteration: int, previous: IterationRecord | None,
                  state_root: str | None = None) -> IterationRecord:
    """Run (or fetch from cache) iteration `iteration` and record it as completed.

    The record goes to `state_root` (default `root`): `mucode-compare` keeps one per arm while
    every arm's artifacts share `root`, and so its cache.
    """
    problems = problems_task(cfg, root, dataset=cfg.data.train_dataset, split=cfg.data.train_split,
                             limit=cfg.data.train_limit, sample=cfg.data.train_sample)
    rollouts = rollout_task(cfg, root, problems=problems, generator=previous.generator if previous else None,
                            iteration=iteration)
    labelled = execute_task(cfg, root, rollouts=rollouts, problems=problems)
    aggregated = aggregate_task(cfg, root, labelled=labelled, previous=previous.aggregated if previous else None,
                                iteration=iteration)
    verifier = verifier_task(cfg, root, aggregated=aggregated, problems=problems)
    sft = relabel_task(cfg, root, aggregated=aggregated, problems=problems, verifier=verifier)
    if sft.rows == 0:
        # A policy can have nothing to learn from (RFT when no rollout passed): then there is
        # nothing to fine-tune on, and the generator stays the one that made the rollouts.
        get_run_logger().warning("iteration %d: relabel policy %s produced no examples; the generator is unchanged",
                                 iteration, cfg.relabel.policy)
        generator = previous.generator if previous else None
    else:
        generator = finetune_task(cfg, root, sft=sft)
    record = IterationRecord(iteration=iteration, problems=problems, aggregated=aggregated, verifier=verifier,
                             sft=sft, generator=generator, config_digest=cfg.digest())
    record_iteration(state_root or root, record)
    return record


def check_can_continue(record: IterationRecord, root: str) -> None:
    """One-line error when the artifacts the next iteration builds on are gone."""
    store = ArtifactStore(root)
    for name in ("generator", "aggregated"):
        artifact = getattr(record, name)
        if artifact is not None and not store.is_valid(artifact):
            raise RuntimeError(f"iteration {record.iteration}'s {name} {artifact.path} is missing or corrupt: "
                               f"run mucode-train with iterations={record.iteration} to rebuild it "
                               "(cached stages are reused)")


@flow(name="mucode-iteration", log_prints=True)
def mucode_iteration(config: str = "configs/smoke.yaml", overrides: list[str] | None = None) -> int:
    """Run the next iteration of the experiment the config names (iteration 1 when none has completed).

    Args:
        config: path of a YAML config, relative to the repository.
        overrides: `section.key=value` strings applied on top, e.g. `rollout.num_rollouts=4`.

    Returns:
        The number of the iteration it completed.
    """
    cfg, root = load_experiment(config, overrides)
    previous = latest_iteration(root)
    logger = get_run_logger()
    if previous is not None:
        check_can_continue(previous, root)
        if previous.config_digest != cfg.digest():
            logger.warning("the config differs from the one iteration %d ran with", previous.iteration)
    iteration = previous.iteration + 1 if previous else 1
    logger.info("experiment %s: running iteration %d in %s", cfg.name, iteration, root)
    return run_iteration(cfg, root, iteration, previous).iteration
