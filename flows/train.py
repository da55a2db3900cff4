"""Flow `mucode-train`: M iterations of µCode, then evaluation and the report.

`train_arm` runs the iterations of one configuration; a `mucode-compare` flow can call it
once per arm on a shared experiment directory, and every stage whose config sections and
inputs agree between arms is a cache hit. `python -m mucode.flows.train` runs the flow
from a shell (`make demo`). Wiring only.
"""

from __future__ import annotations

import argparse
import os
import sys

from prefect import flow, get_run_logger

from mucode.config import Config, ConfigError
from mucode.flows.evaluate import evaluate_and_report
from mucode.flows.experiment import ConfigChoice, IterationRecord, load_experiment
from mucode.run_summary import summarised_run
from mucode.flows.iteration import run_iteration


def train_arm(cfg: Config, root: str, state_root: str | None = None) -> list[IterationRecord]:
    """Iterations 1..cfg.iterations, each from the previous one's generator and aggregate; their records."""
    records: list[IterationRecord] = []
    for iteration in range(1, cfg.iterations + 1):
        records.append(run_iteration(cfg, root, iteration, records[-1] if records else None, state_root=state_root))
    return records


@flow(name="mucode-train", log_prints=True)
def mucode_train(config: ConfigChoice = "configs/smoke.yaml", overrides: list[str] | None = None) -> str:
    """Train M = config.iterations iterations, then evaluate every iteration's generator and the base model.

    Args:
        config: a config of configs/, or the path of another YAML config relative to the repository.
        overrides: `section.key=value` strings applied on top, e.g. `iterations=2`.

    Returns:
        The path of the report.
    """
    cfg, root = load_experiment(config, overrides)
    get_run_logger().info("experiment %s: %d iteration(s) in %s", cfg.name, cfg.iterations, root)
    with summarised_run(cfg, root):
        return evaluate_and_report(cfg, root, train_arm(cfg, root))


def _ui_hint(flow_run_id: object) -> str:
    if os.environ.get("PREFECT_API_URL"):
        from prefect.settings import PREFECT_UI_URL

        return f"Prefect UI: {PREFECT_UI_URL.value()}/runs/flow-run/{flow_run_id}"
    return ("Prefect UI: this run used a temporary server; start one with scripts/prefect-server.sh and "
            "export the PREFECT_API_URL it prints to browse runs")


def flow_argument_parser(module: str, flow_description: str, default_config: str) -> argparse.ArgumentParser:
    """`--config` and repeatable `--override` for running a flow from a shell."""
    parser = argparse.ArgumentParser(prog=f"python -m {module}", description=flow_description.splitlines()[0])
    parser.add_argument("--config", default=default_config, help="YAML config (default: %(default)s)")
    parser.add_argument("--override", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a config value; repeatable")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = flow_argument_parser("mucode.flows.train", mucode_train.description, "configs/smoke.yaml").parse_args(argv)
    try:
        load_experiment(args.config, args.override)  # fail in one line before Prefect starts
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    state = mucode_train(config=args.config, overrides=args.override or None, return_state=True)
    if not state.is_completed():
        print(f"mucode-train ended {state.name}: {state.message}", file=sys.stderr)
        print(_ui_hint(state.state_details.flow_run_id), file=sys.stderr)
        return 1
    print(f"Report: {state.result()}")
    print(_ui_hint(state.state_details.flow_run_id))
    return 0


if __name__ == "__main__":
    sys.exit(main())
