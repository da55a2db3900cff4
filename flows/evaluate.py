"""Flow `mucode-evaluate`: multi-turn Best-of-N of trained generators and the base model, then the report.

`evaluate_and_report` wires, for every `cfg.data.eval_datasets`, the evaluation of each
given iteration's generator (with its verifier) and of the base model, all with the same
selection rule `evaluation.selection` (like with like: the base model is scored by the
first given iteration's verifier, as in `mucode-compare`), then the report.
`mucode-train` calls it with every iteration it ran. Wiring only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from prefect import flow, get_run_logger

from mucode.artifacts import Artifact
from mucode.compare import iteration_label
from mucode.config import Config
from mucode.flows.experiment import ConfigChoice, IterationRecord, load_experiment, read_iterations
from mucode.run_summary import summarised_run
from mucode.selection import VERIFIER_RULES
from mucode.tasks.evaluate import evaluate_task
from mucode.tasks.problems import problems_task
from mucode.tasks.report import report_task

BASE_LABEL = "base"
NO_VERIFIER_RULE = "pt"  # the rule for the base model when no iteration has trained a verifier


@dataclass(frozen=True)
class PlannedGenerator:
    """One generator to evaluate at N = evaluation.n: its method name, model, verifier and selection rule."""

    label: str
    generator: Artifact | None  # None: the base model
    verifier: Artifact | None
    selection: str


def generators_to_evaluate(cfg: Config, records: Sequence[IterationRecord]) -> list[PlannedGenerator]:
    """Each record's generator with its own verifier, then the base model with the first record's verifier.

    Every one uses `evaluation.selection`, so the base row and the trained rows differ only
    in the generator (and the verifier's iteration). With no record there is no verifier:
    the base model alone, with `pt` when the configured rule needs a verifier. A record that
    trained nothing (generator None) is the base model, evaluated once as such.
    """
    selection = cfg.evaluation.selection
    if not records:
        return [PlannedGenerator(BASE_LABEL, None, None,
                                 NO_VERIFIER_RULE if selection in VERIFIER_RULES else selection)]
    last = records[-1].iteration
    planned = [PlannedGenerator(iteration_label(cfg.relabel.policy, record.iteration, last), record.generator,
                                record.verifier, selection) for record in records if record.generator is not None]
    return [*planned, PlannedGenerator(BASE_LABEL, None, records[0].verifier, selection)]


def evaluate_generators(cfg: Config, root: str, records: Sequence[IterationRecord]) -> list[Artifact]:
    """The evaluations of `generators_to_evaluate` on every eval dataset."""
    evaluations = []
    for dataset in cfg.data.eval_datasets:
        problems = problems_task(cfg, root, dataset=dataset, split=cfg.data.eval_split, limit=cfg.data.eval_limit)
        for planned in generators_to_evaluate(cfg, records):
            verifier = planned.verifier if planned.selection in VERIFIER_RULES else None
            evaluations.append(evaluate_task(cfg, root, problems=problems, generator=planned.generator,
                                             verifier=verifier, selection=planned.selection, n=cfg.evaluation.n,
                                             label=planned.label))
    return evaluations


def evaluate_and_report(cfg: Config, root: str, records: Sequence[IterationRecord]) -> str:
    """Evaluate and write the report (the report stage also shows it in the Prefect UI); returns its path."""
    return report_task(cfg, root, evaluations=evaluate_generators(cfg, root, records))


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
    with summarised_run(cfg, root):
        return evaluate_and_report(cfg, root, [records[chosen]] if chosen else [])
