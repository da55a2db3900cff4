"""Flow `mucode-train`: M iterations of µCode, then evaluation and the report.

`train_arm` runs the iterations of one configuration; a `mucode-compare` flow can call it
once per arm on a shared experiment directory, and every stage whose config sections and
inputs agree between arms is a cache hit. `python -m mucode.flows.train` runs the flow
from a shell (`make demo`) through `mucode train` (mucode/cli.py). Wiring only.
"""

from __future__ import annotations

import os
import sys

from prefect import flow, get_run_logger

from mucode.config import Config
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


def ui_hint(flow_run_id: object) -> str:
    if os.environ.get("PREFECT_API_URL"):
        from prefect.settings import PREFECT_UI_URL

        return f"Prefect UI: {PREFECT_UI_URL.value()}/runs/flow-run/{flow_run_id}"
    return ("Prefect UI: this run used a temporary server; start one with scripts/prefect-server.sh and "
            "export the PREFECT_API_URL it prints to browse runs")


def main(argv: list[str] | None = None) -> int:
    """`mucode train` (`--config`, repeatable `--set`/`--override`), run as `python -m mucode.flows.train`."""
    from mucode.cli import run_command

    return run_command("train", argv)


if __name__ == "__main__":
    sys.exit(main())
