"""The `mucode` command line: thin commands over the stage functions and the flows.

Each command parses its options, imports what it needs lazily (so `mucode --help` does not
load torch), calls the stage functions (`rollout`, `evaluate`, `stage`) or a flow (`train`,
`compare`; `python -m mucode.flows.train|compare` run these same commands through
`run_command`), and turns a known error into one line on stderr and exit code 2. No
algorithm lives here.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="µCode: multi-turn code generation by expert iteration, as a resumable DAG.")
sandbox_app = typer.Typer(no_args_is_help=True, help="The execution sandbox image.")
app.add_typer(sandbox_app, name="sandbox")


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg="red", err=True)
    raise typer.Exit(2)


def _is_user_error(error: BaseException) -> bool:
    """mucode's own errors (and missing files) already say in one line what is wrong and how to fix it."""
    return isinstance(error, FileNotFoundError) or type(error).__module__.startswith("mucode.")


def _run(function, *args, **kwargs):
    try:
        return function(*args, **kwargs)
    except Exception as error:
        if not _is_user_error(error):
            raise
        _fail(str(error))


def _parse_pairs(pairs: list[str], what: str) -> dict[str, str]:
    parsed = {}
    for pair in pairs:
        if "=" not in pair:
            _fail(f"{what} '{pair}' must look like name=value")
        key, value = pair.split("=", 1)
        parsed[key.strip()] = value
    return parsed


@app.command()
def data(dataset: str = typer.Argument(..., help="mbpp, humaneval, mbpp-plus, humaneval-plus or codecontests"),
         split: str = typer.Option(..., help="prompt, test, validation, train (MBPP); test (HumanEval)"),
         out: Path = typer.Option(..., help="output Parquet file"),
         data_dir: Optional[Path] = typer.Option(None, help="local folder with the dataset files (offline)"),
         limit: Optional[int] = typer.Option(None, help="first N problems only")):
    """Write one split of a dataset, with public and private tests, as Parquet."""
    from mucode.data import write_problems

    rows = _run(write_problems, dataset, split, out, data_dir=data_dir, limit=limit)
    typer.echo(f"wrote {rows} problems to {out}")


@app.command()
def execute(input: Path = typer.Argument(..., help="JSONL or Parquet with columns id, code, tests"),
            out: Path = typer.Option(..., help="output Parquet with one verdict per row"),
            backend: str = typer.Option("auto", help="local, docker or auto"),
            workers: Optional[int] = typer.Option(None, help="parallel workers (default: cores)"),
            timeout: float = typer.Option(10.0, help="wall-clock seconds per program"),
            memory_mb: int = typer.Option(1024, help="memory limit per program")):
    """Run untrusted programs in the sandbox and write their verdicts."""
    from mucode.sandbox import execute_file

    rows = _run(execute_file, input, out, backend=backend, workers=workers, timeout_s=timeout, memory_mb=memory_mb)
    typer.echo(f"wrote {rows} verdicts to {out}")


@sandbox_app.command("build")
def sandbox_build(base_image: str = typer.Option("python:3.12-slim", help="base image with python3"),
                  tag: str = typer.Option("mucode-sandbox:latest", help="tag of the built image")):
    """Build the Docker sandbox image."""
    from mucode.sandbox.docker import build_image

    typer.echo(_run(build_image, base_image, tag))


@app.command()
def model(name: str = typer.Argument("bundled:smollm2-135m-instruct", help="bundled:NAME, hub id or local dir")):
    """Resolve a model (converting and caching the bundled one) and print its path."""
    from mucode.models import resolve_model

    typer.echo(_run(resolve_model, name))


@app.command()
def rollout(config: Path = typer.Option(..., help="YAML config"),
            out: Path = typer.Option(..., help="output Parquet, one row per turn"),
            model: Optional[str] = typer.Option(None, help="generator (default: the config's model)"),
            split: Optional[str] = typer.Option(None, help="split of the training dataset"),
            limit: Optional[int] = typer.Option(None, help="first N problems"),
            set: list[str] = typer.Option([], "--set", help="config override section.key=value")):
    """Roll out a generator in the multi-turn environment."""
    _run(_rollout, config, out, model, split, limit, set)


def _rollout(config: Path, out: Path, model_name: str | None, split: str | None, limit: int | None,
             overrides: list[str]) -> None:
    from mucode.artifacts import ArtifactStore
    from mucode.config import load_config
    from mucode.orchestration import experiment_root
    from mucode.tasks.problems import problems_stage
    from mucode.tasks.rollout import rollout_stage, summarize_rollouts

    cfg = load_config(config, [*overrides, *([f"model.name={model_name}"] if model_name else [])])
    root = experiment_root(cfg)
    problems = problems_stage(cfg, root, cfg.data.train_dataset, split or cfg.data.train_split,
                              limit=limit or cfg.data.train_limit,
                              sample=None if split else cfg.data.train_sample)  # the draw is of the training split
    # Iteration 0: the base model outside any flow iteration (the flow's own rollouts are 1..M).
    frame = ArtifactStore(root).get_frame(rollout_stage(cfg, root, problems, None, iteration=0))
    out.parent.mkdir(parents=True, exist_ok=True)
    frame.write_parquet(out)
    summary = summarize_rollouts(frame)
    typer.echo(f"wrote {frame.height} turns of {int(summary['rollouts'])} rollouts to {out}; "
               f"final pass rate {summary['final_private_pass_rate']:.3f}")


@app.command()
def stage(name: str = typer.Argument(..., help="problems, rollout, execute, aggregate, verifier, relabel, finetune, evaluate"),
          config: Path = typer.Option(..., help="YAML config"),
          artifact: list[str] = typer.Option([], help="input artifact name=PATH (repeatable)"),
          option: list[str] = typer.Option([], help="other argument name=VALUE (repeatable, YAML-parsed)"),
          set: list[str] = typer.Option([], "--set", help="config override section.key=value")):
    """Re-run one stage on existing artifacts; prints the output artifact's path."""
    typer.echo(_run(_stage, name, config, artifact, option, set))


def _stage(name: str, config: Path, artifacts: list[str], options: list[str], overrides: list[str]) -> str:
    import yaml

    from mucode.artifacts import ArtifactStore
    from mucode.config import load_config
    from mucode.orchestration import experiment_root
    from mucode.tasks import stage_function

    cfg = load_config(config, overrides)
    root = experiment_root(cfg)
    store = ArtifactStore(root)
    arguments = {key: store.ref(path) for key, path in _parse_pairs(artifacts, "--artifact").items()}
    arguments.update({key: yaml.safe_load(value) for key, value in _parse_pairs(options, "--option").items()})
    result = stage_function(name)(cfg, root, **arguments)
    return str(result)


@app.command()
def evaluate(config: Path = typer.Option(..., help="YAML config"),
             generator: str = typer.Option(..., help="generator model: bundled:NAME, hub id or local dir"),
             dataset: str = typer.Option(..., help="humaneval or mbpp (test split)"),
             out: Path = typer.Option(..., help="output directory"),
             verifier: Optional[str] = typer.Option(None, help="verifier model directory"),
             selection: Optional[str] = typer.Option(None, help="random, lv, pt or pt+lv (default: the config's)"),
             n: Optional[int] = typer.Option(None, help="candidates per turn (default: the config's)"),
             turns: Optional[int] = typer.Option(None, help="turns per search (default: the config's)"),
             searches: Optional[int] = typer.Option(None, help="independent searches per problem"),
             limit: Optional[int] = typer.Option(None, help="first N problems"),
             scaling_n: list[int] = typer.Option([], help="also run at this N, for the scaling plot (repeatable)"),
             temperature: Optional[float] = typer.Option(None, help="sampling temperature (0 = greedy)"),
             method: Optional[str] = typer.Option(None, help="name of the method in the report")):
    """Multi-turn Best-of-N evaluation: the problems and evaluate stages over OUT's artifacts, then OUT/report.md."""
    summary, report_path = _run(_evaluate, config, generator, dataset, out, verifier, selection, n, turns, searches,
                                limit, scaling_n, temperature, method)
    for key, value in summary.items():
        typer.echo(f"{key}: {value:.4f}" if isinstance(value, float) else f"{key}: {value}")
    typer.echo(f"report: {report_path}")


def _evaluate(config: Path, generator: str, dataset: str, out: Path, verifier: str | None, selection: str | None,
              n: int | None, turns: int | None, searches: int | None, limit: int | None, scaling_ns: list[int],
              temperature: float | None, method: str | None) -> tuple[dict[str, float], str]:
    """The summary of the main N's evaluation and the report's path; unset options come from the config."""
    from mucode.artifacts import ArtifactStore
    from mucode.best_of_n import check_sizes
    from mucode.config import load_config
    from mucode.report import build_report
    from mucode.selection import check_selection
    from mucode.tasks.evaluate import evaluate_stage, scaling_plan
    from mucode.tasks.problems import problems_stage

    # The generator is the run's base model: a name or a directory, not an artifact of OUT.
    settings = {"model.name": generator, "evaluation.turns": turns, "evaluation.searches": searches,
                "evaluation.sampling.temperature": temperature, "data.eval_limit": limit}
    cfg = load_config(config, {key: value for key, value in settings.items() if value is not None})
    selection, n = selection or cfg.evaluation.selection, n or cfg.evaluation.n
    check_selection(selection, has_verifier=verifier is not None)  # before anything is loaded or written
    check_sizes(n, cfg.evaluation.turns, cfg.evaluation.searches)
    plan = scaling_plan(n, scaling_ns)
    root = str(out)
    store = ArtifactStore(root)
    problems = problems_stage(cfg, root, dataset, cfg.data.eval_split, limit=cfg.data.eval_limit)
    verifier_artifact = None if verifier is None else stored_model(store, verifier, stage="verifier")
    evaluations = [evaluate_stage(cfg, root, problems, None, verifier_artifact, selection, value, method or generator)
                   for value in plan]
    # The report of every evaluation stored in OUT (`mucode report OUT` rebuilds the same).
    return store.manifest(evaluations[0])["metrics"], str(build_report(out))


def stored_model(store, path: str, stage: str):
    """The artifact of a model directory: itself when it is an artifact already, else a stored copy."""
    if Path(f"{str(path).rstrip('/')}.json").is_file():  # a manifest beside it: stored by some run
        return store.ref(path)
    return store.put_dir(path, stage=stage)


@app.command()
def report(run_dir: Path = typer.Argument(..., help="an experiment directory")):
    """Rebuild the Markdown report and its plots from the run's artifacts alone."""
    from mucode.report import build_report

    typer.echo(_run(build_report, run_dir))


OVERRIDE_OPTION = ("--set", "--override")  # --override: the flows' older spelling, kept for `python -m mucode.flows.X`


@app.command()
def train(config: Path = typer.Option(Path("configs/smoke.yaml"), help="YAML config"),
          set: list[str] = typer.Option([], *OVERRIDE_OPTION, help="config override section.key=value (repeatable)")):
    """Run the whole M-iteration µCode flow (Prefect), then evaluation and the report."""
    from mucode.flows.experiment import load_experiment
    from mucode.flows.train import mucode_train, ui_hint

    _run(load_experiment, str(config), set)  # fail in one line before Prefect starts
    state = mucode_train(config=str(config), overrides=set or None, return_state=True)
    raise typer.Exit(_flow_outcome(state, "mucode-train", ui_hint(state.state_details.flow_run_id)))


@app.command()
def compare(config: Path = typer.Option(Path("configs/compare-cpu.yaml"), help="YAML config"),
            set: list[str] = typer.Option([], *OVERRIDE_OPTION, help="config override section.key=value (repeatable)"),
            plan: bool = typer.Option(False, "--plan", help="print what would run (stages, evaluations, cost, power, "
                                                              "GPU commands) as JSON and exit"),
            speed: list[str] = typer.Option([], metavar="NAME=TOK_PER_S",
                                            help="a measured speed for the plan's cost (repeatable); names: "
                                                 "the fields of Speeds in mucode/budget.py"),
            shape: list[str] = typer.Option([], metavar="NAME=VALUE",
                                            help="a token count or rate for the plan's cost (repeatable); names: "
                                                 "the fields of Shape in mucode/budget.py"),
            discordance: list[float] = typer.Option([], metavar="SHARE",
                                                    help="share of problems two methods disagree on, for the plan's "
                                                         "power table (repeatable; default 0.1, 0.2, 0.3)"),
            discordance_from: Optional[Path] = typer.Option(
                None, "--discordance-from", metavar="PARQUET",
                help="the base model's rollouts (a run's execute or aggregate artifact): the plan's power table "
                     "adds the share two of its runs disagree on, measured (mucode.power.sampling_discordance)")):
    """Train every arm of compare.arms from the same base rollouts, evaluate them and the base model, report."""
    import json

    from mucode.budget import Shape, Speeds
    from mucode.flows.compare import DEFAULT_DISCORDANCES, compare_plan, mucode_compare, with_values
    from mucode.flows.experiment import load_experiment

    cfg, _ = _run(load_experiment, str(config), set)
    speeds, shapes = _run(with_values, Speeds(), speed), _run(with_values, Shape(), shape)
    if plan:
        shares, measured = list(discordance or DEFAULT_DISCORDANCES), None
        if discordance_from is not None:
            measured = _run(_measured_discordance, discordance_from)
            shares.insert(0, measured["share"])
        planned = compare_plan(cfg, speeds, shapes, shares)
        if measured:
            planned["measured_discordance"] = measured
        typer.echo(json.dumps(planned, indent=2))
        return
    state = mucode_compare(config=str(config), overrides=set or None, return_state=True)
    raise typer.Exit(_flow_outcome(state, "mucode-compare"))


def _measured_discordance(path: Path) -> dict:
    import polars as pl

    from mucode.compare import rollout_outcomes
    from mucode.power import sampling_discordance

    if not path.is_file():
        raise FileNotFoundError(f"no rollout artifact at {path}: give a run's artifacts/execute/<hash>.parquet")
    try:
        problems, share = sampling_discordance(rollout_outcomes(pl.read_parquet(path)))
    except ValueError as error:  # one run per problem: nothing to measure
        _fail(f"{path}: {error}")
    return {"source": str(path), "problems": problems, "share": round(share, 4)}


def _flow_outcome(state, flow_name: str, hint: str = "") -> int:
    """Print where a finished flow's report is (or how it ended) and the UI hint; the exit code."""
    if not state.is_completed():
        typer.echo(f"{flow_name} ended {state.name}: {state.message}", err=True)
        if hint:
            typer.echo(hint, err=True)
        return 1
    typer.echo(f"Report: {state.result()}")
    if hint:
        typer.echo(hint)
    return 0


def run_command(command: str, argv: list[str] | None = None) -> int:
    """`mucode COMMAND ARGV...` in this process (argv None: the process's own arguments); its exit code."""
    try:
        app([command, *(sys.argv[1:] if argv is None else argv)], prog_name="mucode")
    except SystemExit as done:  # Typer's standalone mode ends every run with one
        return 0 if done.code is None else done.code if isinstance(done.code, int) else 1
    return 0


def main() -> None:  # pragma: no cover
    sys.exit(app())
