"""Flow `mucode-iteration`: the next µCode iteration of a named experiment.

`run_iteration` wires one iteration i: problems → rollout (generator of iteration i-1, the
base model at i=1) → execute → aggregate (with the previous aggregate) → verifier →
relabel → finetune, and records it in the experiment's state file. `mucode-train` and
`mucode-compare` (through `train_arm`, one arm after another on a shared experiment directory)
reuse it. Wiring only: the stages live in tasks/, caching and retries in mucode.orchestration.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from prefect import flow, get_run_logger

from mucode import tasks
from mucode.artifacts import Artifact, ArtifactStore
from mucode.config import Config
from mucode.flows.experiment import ConfigChoice, IterationRecord, latest_iteration, load_experiment, record_iteration
from mucode.run_summary import summarised_run


ITERATION_STAGES = ("problems", "rollout", "execute", "aggregate", "verifier", "relabel", "finetune")
# What each stage of an iteration makes, under the name the later stages (and IterationRecord) use.
PRODUCES = {"problems": "problems", "rollout": "rollouts", "execute": "labelled", "aggregate": "aggregated",
            "verifier": "verifier", "relabel": "sft", "finetune": "generator"}


def stage_arguments(cfg: Config, stage: str, made: dict[str, Artifact | None], previous: IterationRecord | None,
                    iteration: int) -> dict[str, Any]:
    """A stage's arguments besides (cfg, root) in iteration `iteration`, from what the iteration made so far."""
    if stage == "problems":
        return {"dataset": cfg.data.train_dataset, "split": cfg.data.train_split, "limit": cfg.data.train_limit,
                "sample": cfg.data.train_sample}
    if stage == "rollout":  # the generator of iteration i-1; the base model at i=1
        return {"problems": made["problems"], "generator": previous.generator if previous else None,
                "iteration": iteration}
    if stage == "execute":
        return {"rollouts": made["rollouts"], "problems": made["problems"]}
    if stage == "aggregate":
        return {"labelled": made["labelled"], "previous": previous.aggregated if previous else None,
                "iteration": iteration}
    if stage == "verifier":
        return {"aggregated": made["aggregated"], "problems": made["problems"]}
    if stage == "relabel":
        return {"aggregated": made["aggregated"], "problems": made["problems"], "verifier": made["verifier"]}
    if stage == "finetune":
        return {"sft": made["sft"]}
    raise ValueError(f"{stage} is not a stage of an iteration: choose one of {', '.join(ITERATION_STAGES)}")


def iteration_stage_task(stage: str, refresh: bool = False) -> Any:
    """The stage's cached task; with refresh it recomputes and overwrites the cached result."""
    task = tasks.stage_task(stage)
    return task.with_options(refresh_cache=True) if refresh else task


def run_iteration(cfg: Config, root: str, iteration: int, previous: IterationRecord | None,
                  state_root: str | None = None, refresh: Collection[str] = ()) -> IterationRecord:
    """Run (or fetch from cache) iteration `iteration` and record it as completed.

    The record goes to `state_root` (default `root`): `mucode-compare` keeps one per arm while
    every arm's artifacts share `root`, and so its cache. Stages named in `refresh` are
    recomputed even when cached (`mucode-stage` with `downstream`).
    """
    made: dict[str, Artifact | None] = {}
    for stage in ITERATION_STAGES:
        if stage == "finetune" and made["sft"].rows == 0:
            # A policy can have nothing to learn from (RFT when no rollout passed): then there is
            # nothing to fine-tune on, and the generator stays the one that made the rollouts.
            get_run_logger().warning("iteration %d: relabel policy %s produced no examples; the generator is "
                                     "unchanged", iteration, cfg.relabel.policy)
            made["generator"] = previous.generator if previous else None
            continue
        task = iteration_stage_task(stage, refresh=stage in refresh)
        made[PRODUCES[stage]] = task(cfg, root, **stage_arguments(cfg, stage, made, previous, iteration))
    record = IterationRecord(iteration=iteration, config_digest=cfg.digest(), **made)
    record_iteration(state_root or root, record)
    return record


def nightly_report(cfg: Config, root: str, record: IterationRecord, previous: IterationRecord | None) -> str:
    """Evaluate this iteration's generator, the previous one and the base model on the nightly subset;
    publish the comparison as a Markdown artifact and append it to ROOT/nightly.jsonl (+ nightly.png)."""
    from prefect.artifacts import create_markdown_artifact

    from mucode.nightly import PLOT_FILE, append_history, nightly_entry, nightly_markdown, plot_history, read_history
    from mucode.orchestration import artifact_key, read_timings
    from mucode.run_summary import current_outcomes, stage_walls
    from mucode.tasks.evaluate import evaluate_task

    walls = stage_walls(current_outcomes(), read_timings(root))  # the iteration's stages, before the evaluations
    store = ArtifactStore(root)
    # (generator, verifier, selection) of each method; at iteration 1 the previous generator is the base model.
    methods = {"this": (record.generator, record.verifier, cfg.evaluation.selection)}
    if previous is not None:
        methods["previous"] = (previous.generator, previous.verifier, cfg.evaluation.selection)
    methods["base"] = (None, None, "pt")
    evaluations: dict[str, dict[str, dict[str, Any]]] = {}
    for dataset in cfg.nightly.datasets or cfg.data.eval_datasets:
        problems = tasks.stage_task("problems")(cfg, root, dataset=dataset, split=cfg.data.eval_split,
                                                limit=cfg.nightly.limit)
        evaluations[dataset] = {}
        for method, (generator, verifier, selection) in methods.items():
            label = "base" if method == "base" else f"iteration-{record.iteration - (method == 'previous')}"
            evaluation = evaluate_task(cfg, root, problems=problems, generator=generator, verifier=verifier,
                                       selection=selection, n=cfg.evaluation.n, label=label)
            evaluations[dataset][method] = store.manifest(evaluation).get("metrics", {})
    auc = {f"iteration {rec.iteration}": store.manifest(rec.verifier).get("metrics", {}).get("heldout_auc")
           for rec in (previous, record) if rec is not None}
    examples = {"problems (train)": record.problems.rows, "aggregated rollouts": record.aggregated.rows,
                "fine-tuning examples": record.sft.rows}
    entry = nightly_entry(cfg.name, record.iteration, cfg.evaluation.turns, evaluations, auc, examples, walls)
    markdown = nightly_markdown(entry)
    append_history(root, entry)
    plot_history(read_history(root), store.local_folder(PLOT_FILE))
    store.publish(PLOT_FILE)
    create_markdown_artifact(markdown, key=artifact_key(cfg.name, "nightly"),
                             description=f"iteration {record.iteration} of {cfg.name} vs the previous one and the base model")
    return markdown


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
def mucode_iteration(config: ConfigChoice = "configs/smoke.yaml", overrides: list[str] | None = None) -> int:
    """Run the next iteration of the experiment the config names (iteration 1 when none has completed).

    Then (config `nightly`) evaluate its generator, the previous one and the base model on a fixed
    subset and publish the comparison (run artifact `<name>-nightly`, ROOT/nightly.jsonl, nightly.png).

    Args:
        config: a config of configs/, or the path of another YAML config relative to the repository.
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
    with summarised_run(cfg, root):
        record = run_iteration(cfg, root, iteration, previous)
        if cfg.nightly.enabled:
            nightly_report(cfg, root, record, previous)
        return record.iteration
