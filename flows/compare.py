"""Flow `mucode-compare`: µCode against multi-turn RFT and Multi-STaR², from the same base rollouts.

Every arm (`compare.arms`, each a `relabel.policy`) runs `train_arm` on one shared
experiment directory, so the stages whose config sections and inputs agree between arms
(problems, the base rollouts, their execution and aggregate, the first verifier) are
computed once and are cache hits for the other arms; each arm keeps its iteration records
under `ROOT/arms/<arm>/`. Then the base model and every arm are evaluated on the same
problems at N=1 and at N=`evaluation.n` with `evaluation.selection`, the reference arm also
with each rule of `compare.ablation_selections`, and the compare stage writes the report.
`compare_plan` describes all of that, and the GPU commands, without running anything
(`python -m mucode.flows.compare --plan`). Wiring only.
"""

from __future__ import annotations

import json
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, Iterator

from prefect import flow, get_run_logger

from mucode.artifacts import Artifact
from mucode.config import Config, ConfigError
from mucode.flows.experiment import ConfigChoice, IterationRecord, load_experiment, read_iterations
from mucode.run_summary import summarised_run
from mucode.flows.evaluate import BASE_LABEL
from mucode.flows.train import flow_argument_parser, train_arm
from mucode.tasks.compare import compare_task, reference_method
from mucode.tasks.evaluate import VERIFIER_RULES, alias_evaluation_task, evaluate_task
from mucode.tasks.problems import problems_task

SINGLE_CANDIDATE_RULE = "random"  # with N=1 every rule picks the one candidate; random needs no verifier


@dataclass(frozen=True)
class PlannedEvaluation:
    """One evaluation of the comparison, on every eval dataset unless `datasets` names some."""

    method: str  # `base` or an arm
    n: int
    selection: str
    datasets: tuple[str, ...] | None = None

    @property
    def uses_verifier(self) -> bool:
        return self.selection in VERIFIER_RULES


def arm_config(cfg: Config, arm: str) -> Config:
    """The config of one arm: the comparison's, with `relabel.policy` set to the arm."""
    return cfg.model_copy(update={"relabel": cfg.relabel.model_copy(update={"policy": arm})})


def arm_state_root(root: str, arm: str) -> str:
    return f"{root}/arms/{arm}"


def evaluation_plan(cfg: Config) -> list[PlannedEvaluation]:
    """Base and every arm at N=1 and at N=evaluation.n; the reference arm with every ablation rule."""
    n, selection = cfg.evaluation.n, cfg.evaluation.selection
    methods = [BASE_LABEL, *cfg.compare.arms]
    plan = [PlannedEvaluation(method, 1, SINGLE_CANDIDATE_RULE) for method in methods]
    if n > 1:
        plan += [PlannedEvaluation(method, n, selection) for method in methods]
        reference = reference_method(list(cfg.compare.arms))
        only = tuple(cfg.compare.ablation_datasets) if cfg.compare.ablation_datasets is not None else None
        plan += [PlannedEvaluation(reference, n, rule, only) for rule in cfg.compare.ablation_selections
                 if rule != selection]
    return plan


def compare_plan(cfg: Config) -> dict[str, Any]:
    """What `mucode-compare` would run with this config, and the GPU commands it would build."""
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


def first_verifier(state_root: str) -> Artifact:
    """Iteration 1's verifier: trained on the base rollouts, the same for every arm."""
    return read_iterations(state_root)[0].verifier


def evaluate_all(cfg: Config, root: str, arms: dict[str, IterationRecord], base_verifier: Artifact,
                 phases: dict[str, float]) -> list[Artifact]:
    """Every planned evaluation on every dataset, the Table 1 rows first and the ablation last.

    A method with the same generator and verifier as one already evaluated (an arm that had
    nothing to train on is the base model) gets that evaluation's rows under its own name.
    """
    datasets = {dataset: problems_task(cfg, root, dataset=dataset, split=cfg.data.eval_split, limit=cfg.data.eval_limit)
                for dataset in cfg.data.eval_datasets}
    evaluations, done = [], {}
    for item in evaluation_plan(cfg):
        record = arms.get(item.method)
        generator = record.generator if record else None
        verifier = (record.verifier if record else base_verifier) if item.uses_verifier else None
        for dataset, problems in datasets.items():
            if item.datasets is not None and dataset not in item.datasets:
                continue
            same = (dataset, item.n, item.selection, generator.hash if generator else "", verifier.hash if verifier else "")
            with timed(phases, f"evaluate {item.method} N={item.n} {item.selection} on {dataset}"):
                if same in done:
                    evaluations.append(alias_evaluation_task(cfg, root, evaluation=done[same], label=item.method))
                    continue
                done[same] = evaluate_task(cfg, root, problems=problems, generator=generator, verifier=verifier,
                                           selection=item.selection, n=item.n, label=item.method)
                evaluations.append(done[same])
    return evaluations


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
    arms: dict[str, IterationRecord] = {}
    with summarised_run(cfg, root):
        for arm in cfg.compare.arms:
            with timed(phases, f"train {arm} ({cfg.iterations} iteration(s))"):
                arms[arm] = train_arm(arm_config(cfg, arm), root, state_root=arm_state_root(root, arm))
        base_verifier = first_verifier(arm_state_root(root, cfg.compare.arms[0]))
        evaluations = evaluate_all(cfg, root, arms, base_verifier, phases)
        return compare_task(cfg, root, evaluations=evaluations, phases=phases)


def main(argv: list[str] | None = None) -> int:
    parser = flow_argument_parser("mucode.flows.compare", mucode_compare.description, "configs/compare-cpu.yaml")
    parser.add_argument("--plan", action="store_true",
                        help="print what would run (stages, evaluations, GPU commands) as JSON and exit")
    args = parser.parse_args(argv)
    try:
        cfg, _ = load_experiment(args.config, args.override)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.plan:
        print(json.dumps(compare_plan(cfg), indent=2))
        return 0
    state = mucode_compare(config=args.config, overrides=args.override or None, return_state=True)
    if not state.is_completed():
        print(f"mucode-compare ended {state.name}: {state.message}", file=sys.stderr)
        return 1
    print(f"Report: {state.result()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
