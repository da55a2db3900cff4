"""Flow `mucode-compare`: µCode against multi-turn RFT and Multi-STaR², from the same base rollouts.

Every arm (`compare.arms`, each a `relabel.policy`) runs `train_arm` on one shared
experiment directory, so the stages whose config sections and inputs agree between arms
(problems, the base rollouts, their execution and aggregate, the first verifier) are
computed once and are cache hits for the other arms; each arm keeps its iteration records
under `ROOT/arms/<arm>/`. Then the base model and every iteration of every arm are evaluated
on the same problems (`evaluation_plan`: N=1 rows, the single-turn rows at T=1, N=`evaluation.n`
with `evaluation.selection`, the reference arm's selection ablation), and the compare stage
rewrites the report after each evaluation, so a run of many hours shows its finished rows
(in ROOT/report/compare.md and the Prefect UI) while it goes on. `compare_plan` describes
all of that, the cost of the run and the differences it can resolve (`mucode.budget`,
`mucode.power`), and the GPU commands, without running anything (`mucode compare --plan`,
or `python -m mucode.flows.compare --plan`). Wiring only.
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields, replace
from collections.abc import Callable, Sequence
from typing import Any, Iterator

from prefect import flow, get_run_logger

from mucode.artifacts import Artifact, ArtifactStore
from mucode.budget import Shape, Speeds, problem_count, run_cost
from mucode.config import Config, ConfigError
from mucode.compare import iteration_label
from mucode.flows.experiment import ConfigChoice, IterationRecord, load_experiment
from mucode.run_summary import summarised_run
from mucode.flows.evaluate import BASE_LABEL
from mucode.flows.train import train_arm
from mucode.power import power_table
from mucode.tasks.compare import compare_task, reference_method
from mucode.selection import VERIFIER_RULES
from mucode.tasks.evaluate import alias_evaluation_task, evaluate_task
from mucode.tasks.problems import problems_task

SINGLE_CANDIDATE_RULE = "random"  # with N=1 every rule picks the one candidate; random needs no verifier
SINGLE_TURN_POLICIES = ("single-turn-rft",)  # arms evaluated with T = 1 (Table 1's single-turn rows)
SINGLE_TURN_BASE_LABEL = "single-turn-base"  # the base model at T = 1: "Single-turn Instruct"
STRONGEST_BASELINE = "strongest-baseline"  # in compare.bon_methods: chosen at run time from the N=1 results


@dataclass(frozen=True)
class PlannedEvaluation:
    """One evaluation of the comparison, on every eval dataset unless `datasets` names some."""

    method: str  # base, single-turn-base, an arm (its last iteration), <arm>@iter<i>, or strongest-baseline
    n: int
    selection: str
    datasets: tuple[str, ...] | None = None
    turns: int = 0  # 0: evaluation.turns (the plan fills it in)
    arm: str = ""  # whose generator: "" is the base model
    iteration: int = 0  # which of the arm's iterations (0 for the base model)
    reuses: str = ""  # the method whose rows it takes without a search ("" when it runs one)

    @property
    def uses_verifier(self) -> bool:
        return self.selection in VERIFIER_RULES


def arm_config(cfg: Config, arm: str) -> Config:
    """The config of one arm: the comparison's, with `relabel.policy` set to the arm."""
    return cfg.model_copy(update={"relabel": cfg.relabel.model_copy(update={"policy": arm})})


def turns_config(cfg: Config, turns: int) -> Config:
    """The config with `evaluation.turns` set (the single-turn rows run T = 1)."""
    return cfg.model_copy(update={"evaluation": cfg.evaluation.model_copy(update={"turns": turns})})


def arm_state_root(root: str, arm: str) -> str:
    return f"{root}/arms/{arm}"


def _multi_turn_methods(cfg: Config) -> list[PlannedEvaluation]:
    """The base model and every iteration of every multi-turn arm, as N=1 evaluations at T turns."""
    methods = [PlannedEvaluation(BASE_LABEL, 1, SINGLE_CANDIDATE_RULE)]
    for arm in (arm for arm in cfg.compare.arms if arm not in SINGLE_TURN_POLICIES):
        methods += [PlannedEvaluation(iteration_label(arm, iteration, cfg.iterations), 1, SINGLE_CANDIDATE_RULE,
                                      arm=arm, iteration=iteration) for iteration in range(1, cfg.iterations + 1)]
    return methods


def evaluation_plan(cfg: Config) -> list[PlannedEvaluation]:
    """Table 1's rows, then the reference arm's selection ablation.

    N=1 at T turns: the base model and each iteration of each multi-turn arm. N=1 at T=1: the
    base model (Single-turn Instruct) and each iteration of each single-turn arm. N=n with
    `evaluation.selection`: the methods of `compare.bon_methods` (every multi-turn method when
    unset; `strongest-baseline` is resolved after the N=1 rows) on `compare.bon_datasets`.
    The ablation: the reference arm's last iteration with every other rule.
    """
    n, selection, turns = cfg.evaluation.n, cfg.evaluation.selection, cfg.evaluation.turns
    multi_turn = _multi_turn_methods(cfg)
    plan = list(multi_turn)
    if turns > 1:
        # The first turn of the base model's N=1 search is its T=1 search (`alias_evaluation_stage`).
        plan.append(PlannedEvaluation(SINGLE_TURN_BASE_LABEL, 1, SINGLE_CANDIDATE_RULE, turns=1, reuses=BASE_LABEL))
    for arm in (arm for arm in cfg.compare.arms if arm in SINGLE_TURN_POLICIES):
        plan += [PlannedEvaluation(iteration_label(arm, iteration, cfg.iterations), 1, SINGLE_CANDIDATE_RULE,
                                   turns=1, arm=arm, iteration=iteration)
                 for iteration in range(1, cfg.iterations + 1)]
    if n > 1:
        wanted = cfg.compare.bon_methods
        bon_datasets = tuple(cfg.compare.bon_datasets) if cfg.compare.bon_datasets is not None else None
        plan += [replace(item, n=n, selection=selection, datasets=bon_datasets) for item in multi_turn
                 if wanted is None or item.method in wanted]
        if wanted is not None and STRONGEST_BASELINE in wanted:
            plan.append(PlannedEvaluation(STRONGEST_BASELINE, n, selection, bon_datasets))
        reference = reference_method(list(cfg.compare.arms))
        only = tuple(cfg.compare.ablation_datasets) if cfg.compare.ablation_datasets is not None else None
        plan += [PlannedEvaluation(reference, n, rule, only, arm=reference, iteration=cfg.iterations)
                 for rule in cfg.compare.ablation_selections if rule != selection]
    return [replace(item, turns=item.turns or turns) for item in plan]


def baseline_candidates(cfg: Config) -> list[PlannedEvaluation]:
    """What `strongest-baseline` chooses from: the base model and the last iteration of every
    multi-turn arm other than the reference one."""
    reference = reference_method(list(cfg.compare.arms))
    return [item for item in _multi_turn_methods(cfg)
            if item.arm != reference and (not item.arm or item.iteration == cfg.iterations)]


def strongest_baseline(cfg: Config, n1_bon: dict[str, list[float]]) -> PlannedEvaluation:
    """The baseline with the highest mean N=1 BoN@T over the datasets (`n1_bon`: method -> values);
    ties go to the earlier in `baseline_candidates`."""
    candidates = [item for item in baseline_candidates(cfg) if n1_bon.get(item.method)]
    if not candidates:
        raise ConfigError("compare.bon_methods names strongest-baseline but no baseline has an N=1 result")
    return max(candidates, key=lambda item: (sum(n1_bon[item.method]) / len(n1_bon[item.method]),
                                             -candidates.index(item)))


DEFAULT_DISCORDANCES = (0.1, 0.2, 0.3)  # until the base model's discordance is measured (--discordance)


def compare_plan(cfg: Config, speeds: Speeds | None = None, shape: Shape | None = None,
                 discordances: Sequence[float] = DEFAULT_DISCORDANCES) -> dict[str, Any]:
    """What `mucode-compare` would run with this config, what it costs (`mucode.budget`, at
    `speeds`), the paired differences its evaluation sizes resolve at 95% for each
    discordance (`mucode.power`), and the GPU commands it would build."""
    from mucode import tasks

    stages = ["problems", "rollout", "execute", "aggregate", "verifier", "relabel", "finetune", "evaluate", "compare"]
    plan: dict[str, Any] = {
        "experiment": cfg.name,
        "arms": list(cfg.compare.arms),
        "iterations": cfg.iterations,
        "stages": {name: tasks.stage_task(name).name for name in stages},
        "shared_by_every_arm": ["problems", "rollout (iteration 1)", "execute (iteration 1)", "aggregate (iteration 1)",
                                "verifier (iteration 1)"],
        "evaluations": [asdict(item) for item in evaluation_plan(cfg)],
        "eval_datasets": list(cfg.data.eval_datasets),
        "cost": run_cost(cfg, evaluation_plan(cfg), speeds, shape),
        "power": power_table({dataset: problem_count(dataset, cfg.data.eval_split, cfg.data.eval_limit)
                              for dataset in cfg.data.eval_datasets}, list(discordances)),
    }
    if cfg.compute.num_gpus > 0:
        plan["gpu"] = gpu_commands(cfg)
    return plan


def gpu_commands(cfg: Config) -> dict[str, Any]:
    """The accelerate launches of the training stages and the SGLang engine settings (built, not run)."""
    from mucode.engines.sglang import engine_kwargs
    from mucode.training import build_launch_command, launch_options

    def launch(stage: str, settings: Any, frames: list[str]) -> list[str]:
        options = launch_options(stage, settings, cfg.compute, cfg.model.name, "<artifact dir>", cfg.seed)
        for frame in frames:  # run_training writes each frame to a temporary Parquet file
            options += [f"--{frame}", f"<{frame}.parquet>"]
        return build_launch_command(stage, cfg.compute, [*options, "--metrics", "<metrics.json>"])

    return {
        "verifier": launch("verifier", cfg.verifier, ["aggregated", "problems"]),
        "finetune": launch("finetune", cfg.finetune, ["sft"]),
        "sglang_engine": engine_kwargs(model_path=cfg.model.name, tp_size=cfg.engine.tp_size, dp_size=cfg.engine.dp_size,
                                       base_gpu_id=0, mem_fraction_static=cfg.engine.mem_fraction_static,
                                       dtype=cfg.model.dtype, max_running_requests=cfg.engine.batch_size,
                                       deterministic=False),
    }


@contextmanager
def timed(phases: dict[str, float], name: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        phases[name] = round(time.perf_counter() - started, 1)


def evaluate_all(cfg: Config, root: str, arms: dict[str, list[IterationRecord]],
                 phases: dict[str, float],
                 after_each: Callable[[list[Artifact]], None] | None = None) -> list[Artifact]:
    """Every planned evaluation on every dataset, the Table 1 rows first and the ablation last.

    `after_each` is called with the evaluations so far after each one (the flow rewrites its
    report then, so a run that takes days shows its finished rows while it goes on).

    The base model is scored by iteration 1's verifier (trained on the base rollouts, the same
    for every arm). A method with the same generator, verifier and N as one already evaluated
    (an arm that had nothing to train on is the base model) gets that evaluation's rows under
    its own name, cut to its turns when it has fewer (T = 1 is the first turn of a T-turn search).
    """
    datasets = {dataset: problems_task(cfg, root, dataset=dataset, split=cfg.data.eval_split, limit=cfg.data.eval_limit)
                for dataset in cfg.data.eval_datasets}
    base_verifier = next(iter(arms.values()))[0].verifier
    store, full_turns = ArtifactStore(root), cfg.evaluation.turns
    evaluations, done, n1_bon, evaluated = [], {}, {}, set()
    for item in evaluation_plan(cfg):
        if item.method == STRONGEST_BASELINE:
            item = replace(strongest_baseline(cfg, n1_bon), n=item.n, selection=item.selection, datasets=item.datasets)
            if (item.method, item.n, item.selection) in evaluated:
                continue  # already among bon_methods
        evaluated.add((item.method, item.n, item.selection))
        record = arms[item.arm][item.iteration - 1] if item.arm else None
        generator = record.generator if record else None
        verifier = (record.verifier if record else base_verifier) if item.uses_verifier else None
        turns = item.turns or full_turns
        for dataset, problems in datasets.items():
            if item.datasets is not None and dataset not in item.datasets:
                continue
            same = (dataset, item.n, item.selection, generator.hash if generator else "", verifier.hash if verifier else "")
            with timed(phases, f"evaluate {item.method} N={item.n} T={turns} {item.selection} on {dataset}"):
                if (*same, turns) in done:
                    evaluation = alias_evaluation_task(cfg, root, evaluation=done[(*same, turns)], label=item.method)
                elif (*same, full_turns) in done:
                    evaluation = alias_evaluation_task(cfg, root, evaluation=done[(*same, full_turns)],
                                                       label=item.method, turns=turns)
                    done[(*same, turns)] = evaluation  # an untrained single-turn arm then shows `= <this>`
                else:
                    evaluation = evaluate_task(turns_config(cfg, turns), root, problems=problems, generator=generator,
                                               verifier=verifier, selection=item.selection, n=item.n,
                                               label=item.method)
                    done[(*same, turns)] = evaluation
            evaluations.append(evaluation)
            if item.n == 1 and turns == full_turns:
                n1_bon.setdefault(item.method, []).append(store.manifest(evaluation)["metrics"][f"bon@{turns}"])
            if after_each is not None:
                after_each(list(evaluations))
    return evaluations


def training_summary(arms: dict[str, list[IterationRecord]]) -> dict[str, list[dict[str, Any]]]:
    """What the compare stage reports of each arm's iterations: its SFT data, verifier and generator."""
    return {arm: [{"iteration": record.iteration, "sft": record.sft, "verifier": record.verifier,
                   "aggregated": record.aggregated, "generator": record.generator} for record in records]
            for arm, records in arms.items()}


@flow(name="mucode-compare", log_prints=True)
def mucode_compare(config: ConfigChoice = "configs/compare-cpu.yaml", overrides: list[str] | None = None) -> str:
    """Train every arm of `compare.arms` from the same base rollouts, evaluate them and the base model, report.

    Args:
        config: a config of configs/, or the path of another YAML config relative to the repository.
        overrides: `section.key=value` strings applied on top, e.g. `data.eval_limit=10`.

    Returns:
        The path of compare.md.
    """
    cfg, root = load_experiment(config, overrides)
    logger = get_run_logger()
    logger.info("comparing %s over %d iteration(s) in %s", ", ".join(cfg.compare.arms), cfg.iterations, root)
    phases: dict[str, float] = {}
    arms: dict[str, list[IterationRecord]] = {}
    with summarised_run(cfg, root):
        for arm in cfg.compare.arms:
            with timed(phases, f"train {arm} ({cfg.iterations} iteration(s))"):
                arms[arm] = train_arm(arm_config(cfg, arm), root, state_root=arm_state_root(root, arm))
        training, reports = training_summary(arms), []

        def report_so_far(evaluations: list[Artifact]) -> None:
            reports.append(compare_task(cfg, root, evaluations=evaluations, phases=dict(phases), training=training))

        evaluate_all(cfg, root, arms, phases, after_each=report_so_far)
        return reports[-1]


def with_values(settings: Any, pairs: list[str]) -> Any:
    """`settings` (a dataclass) with `name=value` pairs applied, each value cast to the field's type."""
    known = {field.name: type(getattr(settings, field.name)) for field in fields(settings)}
    updates = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        if name not in known:
            raise ConfigError(f"unknown name {name!r} in {pair!r}: use one of {', '.join(known)}")
        try:
            updates[name] = known[name](value)
        except ValueError:
            raise ConfigError(f"{pair!r}: {value!r} is not a {known[name].__name__}") from None
    return replace(settings, **updates)


def main(argv: list[str] | None = None) -> int:
    """`mucode compare` (`--config`, `--set`/`--override`, `--plan`, `--speed`, `--shape`,
    `--discordance`), run as `python -m mucode.flows.compare`."""
    from mucode.cli import run_command

    return run_command("compare", argv)


if __name__ == "__main__":
    sys.exit(main())
