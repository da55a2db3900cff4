"""Flow `mucode-evaluate`: multi-turn Best-of-N of a trained generator and the base model, then the report.

`evaluate_and_report` wires, for every `cfg.data.eval_datasets`, the evaluation of the
generator (with its verifier and the configured selection rule) and of the base model
(selection `pt`, no verifier), then the report. `mucode-train` calls it after the last
iteration. Wiring only.
"""

from __future__ import annotations

from prefect import flow, get_run_logger

from mucode.artifacts import Artifact
from mucode.config import Config
from mucode.flows.experiment import ConfigChoice, load_experiment, read_iterations
from mucode.run_summary import summarised_run
from mucode.tasks.evaluate import evaluate_task
from mucode.tasks.problems import problems_task
from mucode.tasks.report import report_task

BASE_LABEL = "base"


def evaluate_generator(cfg: Config, root: str, generator: Artifact | None,
                       verifier: Artifact | None) -> list[Artifact]:
    """Evaluations on every eval dataset: the generator (when given) and the base model."""
    evaluations = []
    for dataset in cfg.data.eval_datasets:
        problems = problems_task(cfg, root, dataset=dataset, split=cfg.data.eval_split, limit=cfg.data.eval_limit)
        if generator is not None:
            evaluations.append(evaluate_task(cfg, root, problems=problems, generator=generator, verifier=verifier,
                                             selection=cfg.evaluation.selection, n=cfg.evaluation.n,
                                             label=cfg.relabel.policy))
        evaluations.append(evaluate_task(cfg, root, problems=problems, generator=None, verifier=None,
                                         selection="pt", n=cfg.evaluation.n, label=BASE_LABEL))
    return evaluations


def evaluate_and_report(cfg: Config, root: str, generator: Artifact | None, verifier: Artifact | None) -> str:
    """Evaluate and write the report (the report stage also shows it in the Prefect UI); returns its path."""
    return report_task(cfg, root, evaluations=evaluate_generator(cfg, root, generator, verifier))


@flow(name="mucode-evaluate", log_prints=True)
def mucode_evaluate(config: ConfigChoice = "configs/smoke.yaml", overrides: list[str] | None = None,
                    iteration: int | None = None) -> str:
    """Evaluate the generator of one completed iteration against the base model, and write the report.

    Args:
        config: a config of configs/, or the path of another YAML config relative to the repository.
        overrides: `section.key=value` strings applied on top, e.g. `data.eval_limit=2`.
        iteration: the completed iteration to evaluate; empty = the latest; 0 = the base model only.

    Returns:
        The path of the report.
    """
    cfg, root = load_experiment(config, overrides)
    records = {record.iteration: record for record in read_iterations(root)}
    chosen = max(records) if iteration is None and records else iteration or 0
    if chosen and chosen not in records:
        completed = sorted(records) or "none"
        raise ValueError(f"iteration {chosen} of {cfg.name} has not completed (completed: {completed}): run "
                         "mucode-train or mucode-iteration first, or pass iteration=0 for the base model")
    get_run_logger().info("evaluating %s", f"iteration {chosen}" if chosen else "the base model only")
    record = records.get(chosen)
    with summarised_run(cfg, root):
        return evaluate_and_report(cfg, root, record.generator if record else None, record.verifier if record else None)
