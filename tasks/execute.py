"""Execute stage: the oracle labels of every turn of every rollout.

Re-runs each turn's code on the problem's oracle tests (`private_tests`) in the sandbox and
records the verdict. Training labels come from here, not from the rollout loop's in-line
verdicts, so they can be recomputed with a stricter suite (MBPP+) or another sandbox
backend without regenerating, and a program whose verdict changes between the two runs
(flaky, time-limited) is flagged. Identical (task, code) pairs are executed once.
"""

from __future__ import annotations

import functools

from mucode.orchestration import run_batches, stage_task

import polars as pl

from mucode.data.programs import distinct_programs
from mucode.sandbox import Program



class ExecuteInputError(ValueError):
    """The rollouts cannot be labelled; the message is one line."""


def oracle_programs(rollouts: pl.DataFrame, problems: pl.DataFrame) -> tuple[list[Program], list[int]]:
    """Distinct (task, code) programs, and for each rollout row the index of its program."""
    by_task = {row["task_id"]: row for row in problems.iter_rows(named=True)}
    unknown = set(rollouts["task_id"].unique()) - set(by_task)
    if unknown:
        raise ExecuteInputError(f"rollouts name {len(unknown)} task ids not in the problems artifact "
                                f"(e.g. {sorted(unknown)[0]}): pass the problems the rollouts were made from")
    return distinct_programs((by_task[task_id], code, by_task[task_id]["private_tests"])
                             for task_id, code in zip(rollouts["task_id"], rollouts["code"]))


def label_rollouts(rollouts: pl.DataFrame, problems: pl.DataFrame, run_programs) -> tuple[pl.DataFrame, list[float]]:
    """The rollouts with oracle labels, and each distinct program's wall time in the sandbox;
    `run_programs(programs) -> verdicts` is a sandbox's run.

    The times stay out of the rows: they differ on every run, and rows that differ would give
    a recomputed artifact a new hash and make every later stage train again."""
    programs, row_program = oracle_programs(rollouts, problems)
    verdicts = run_programs(programs) if programs else []
    passed = [verdicts[i].passed for i in row_program]
    labelled = rollouts.with_columns(
        pl.Series("oracle_passed", passed, dtype=pl.Boolean),
        pl.Series("oracle_status", [verdicts[i].status for i in row_program], dtype=pl.String),
    )
    labelled = labelled.with_columns((pl.col("oracle_passed") != pl.col("private_passed")).alias("label_mismatch"))
    return labelled, [verdict.wall_s for verdict in verdicts]


EXEC_BATCH = 64  # programs per Dask task: enough to amortise one sandbox start


def run_in_sandbox(programs, *, backend, workers, timeout_s, memory_mb):
    """One batch in a fresh sandbox: what a Dask worker runs (module level, so picklable)."""
    from mucode.sandbox import make_sandbox

    with make_sandbox(backend, workers=workers, timeout_s=timeout_s, memory_mb=memory_mb) as sandbox:
        return sandbox.run(programs)


def run_on_cluster(cfg, programs):
    """Verdicts for `programs`, in batches on the Dask cluster at `cfg.compute.dask_address`."""
    judge = functools.partial(run_in_sandbox, backend=cfg.sandbox.backend, workers=cfg.sandbox.workers,
                              timeout_s=cfg.sandbox.timeout_s, memory_mb=cfg.sandbox.memory_mb)
    batches = [programs[i:i + EXEC_BATCH] for i in range(0, len(programs), EXEC_BATCH)]
    return [verdict for batch in run_batches(judge, batches, cfg.compute.dask_address) for verdict in batch]


# The config sections the stage reads: its cache key and its manifest's config hash.
SECTIONS = ("sandbox",)


def execute_stage(cfg, root: str, rollouts, problems):
    """Store-level stage: label stored rollouts against stored problems."""
    from mucode.artifacts import ArtifactStore
    from mucode.stage_resources import make_sandbox_from_config

    store = ArtifactStore(root)
    frame, problem_frame = store.get_frame(rollouts), store.get_frame(problems)
    if cfg.compute.dask_address:
        labelled, walls = label_rollouts(frame, problem_frame, functools.partial(run_on_cluster, cfg))
    else:
        with make_sandbox_from_config(cfg) as sandbox:
            labelled, walls = label_rollouts(frame, problem_frame, sandbox.run)
    metrics = {"rows": labelled.height, "oracle_pass_rate": float(labelled["oracle_passed"].mean() or 0.0),
               "label_mismatches": int(labelled["label_mismatch"].sum()), "programs": len(walls),
               "program_wall_s": round(sum(walls), 3), "slowest_program_s": round(max(walls, default=0.0), 3)}
    return store.put_frame(labelled, stage="execute", config_hash=cfg.section_digest(*SECTIONS),
                           inputs=[rollouts.hash, problems.hash], extra={"metrics": metrics})


# The Prefect task: cached on the config sections read and the input artifacts' hashes.
execute_task = stage_task(execute_stage, name="execute", sections=SECTIONS, retries=2)
