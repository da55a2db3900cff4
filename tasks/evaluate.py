"""The evaluate stage: multi-turn Best-of-N of a generator over stored artifacts.

- `evaluate_stage` / `evaluate_task`: load the stored problems, the generator (a stored one
  or the base model) and the verifier, run the search (`mucode.best_of_n.run_search`); the
  rows are the artifact and the summary (`mucode.eval_summary.summarize`) is in its manifest.
  The rows are checkpointed after every turn (`mucode.eval_checkpoint`, under
  ROOT/checkpoints/): a killed stage, run again, resumes at its last finished turn. The
  engine's replies are kept by call (`mucode.generation_memo`, under ROOT/generations/), so
  evaluations that differ only in selection generate their shared turn-1 calls once. The
  flows and `mucode evaluate` both run it.
- `scaling_plan`: the N values of an inference-time-scaling run (`mucode evaluate --scaling-n`).
- `alias_evaluation_stage`: an evaluation's rows under another method's name.

This module does not select candidates (`mucode.selection`), run the turns
(`mucode.best_of_n`, `mucode.search`) or compute metrics (`mucode.eval_summary`); it does not
train, and does not write the report (`tasks.report`, `mucode.report`).
"""

from __future__ import annotations

from mucode.orchestration import stage_task

import dataclasses
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import polars as pl

from mucode.best_of_n import check_sizes, finished_turns, run_search
from mucode.eval_checkpoint import (
    checkpoint_key,
    checkpoint_path,
    load_checkpoint,
    remove_checkpoints,
    save_checkpoint,
)
from mucode.eval_summary import summarize
from mucode.selection import EvaluationError, check_selection


def scaling_plan(n: int, scaling_ns: Sequence[int]) -> list[int]:
    """The N values to run: the main N first, then each scaling N once."""
    plan = [n]
    for value in scaling_ns:
        if value < 1:
            raise EvaluationError(f"scaling N values must be >= 1, got {value}")
        if value not in plan:
            plan.append(value)
    return plan


def _resumable_rows(checkpoint: Path, problems: pl.DataFrame, *, n: int, turns: int, searches: int,
                    selection: str) -> pl.DataFrame | None:
    """The checkpointed rows of this run, or None (none, unreadable, or not replayable: start over)."""
    finished = load_checkpoint(checkpoint)
    if finished is None:
        return None
    expected = {(task_id, search_id) for task_id in problems["task_id"].to_list() for search_id in range(searches)}
    try:
        done = finished_turns(finished, expected, n=n, turns=turns, selection=selection)
    except EvaluationError as error:
        print(f"checkpoint {checkpoint} not used: {error}; starting from turn 1", file=sys.stderr)
        return None
    print(f"resuming from {checkpoint}: {done} of {turns} turns finished", file=sys.stderr, flush=True)
    return finished


# The config sections the stage reads: its cache key and its manifest's config hash.
SECTIONS = ("model", "engine", "evaluation", "sandbox", "seed")
CHECKPOINT_DIR = "checkpoints"  # under the experiment directory: the turn checkpoints of unfinished evaluations


def checkpoint_folder(store, stage: str, dataset: str) -> Path:
    """Where the turn checkpoints of one evaluation stage on one dataset live (a method is
    evaluated on every eval dataset under one stage name)."""
    return store.local_folder(CHECKPOINT_DIR, stage, dataset)


def evaluate_stage(cfg, root: str, problems, generator, verifier, selection: str, n: int, label: str):
    """Store-level stage: multi-turn Best-of-N of a stored generator (None = base model) on stored problems.

    The rows are the artifact; its manifest carries what the report needs (method, dataset,
    N, selection, the summary with intervals), so the report is rebuilt from artifacts alone.
    The rows are checkpointed after every turn (`mucode.eval_checkpoint`, under
    ROOT/checkpoints/): a killed stage, run again, resumes at its last finished turn.
    """

    from mucode.artifacts import ArtifactStore
    from mucode.stage_resources import (
        generator_key, generator_model, make_sandbox_from_config, memoized_engine, model_hash, sampling_params)

    evaluation = cfg.evaluation
    check_selection(selection, has_verifier=verifier is not None)
    check_sizes(n, evaluation.turns, evaluation.searches)
    store = ArtifactStore(root)
    frame = store.get_frame(problems)
    scorer = None
    if verifier is not None:
        from mucode.verifier_scorer import VerifierScorer

        scorer = VerifierScorer(store.get_dir(verifier), batch_size=cfg.verifier.batch_size,
                                max_length=cfg.verifier.max_length)
    sampling = sampling_params(evaluation.sampling, seed=cfg.seed)
    model = generator_model(cfg, store, generator)
    stage = f"evaluate-{label.replace('/', '_')}"  # a label may be a model path; the stage is a folder name
    # A base model is named, not stored: its files decide whether a checkpoint is still its own.
    settings = {"problems": problems.hash, "generator": generator_key(generator, model),
                "verifier": verifier.hash if verifier is not None else None,
                "n": n, "turns": evaluation.turns, "searches": evaluation.searches, "selection": selection,
                "sampling": dataclasses.asdict(sampling), "seed": cfg.seed,
                "stop_at_public_pass": evaluation.stop_at_public_pass}
    dataset = str(frame["dataset"][0])
    folder = checkpoint_folder(store, stage, dataset)
    checkpoint = checkpoint_path(folder, n, checkpoint_key(settings))
    for stale in remove_checkpoints(folder, n, keep=checkpoint):
        print(f"removed {stale}: a checkpoint of other settings", file=sys.stderr)
    finished = _resumable_rows(checkpoint, frame, n=n, turns=evaluation.turns, searches=evaluation.searches,
                               selection=selection)
    started = time.perf_counter()
    # Evaluations differing only in selection make identical turn-1 calls: generate those once.
    memoized = memoized_engine(cfg, store, model, settings["generator"])
    with memoized as engine, make_sandbox_from_config(cfg) as sandbox:
        rows = run_search(frame, engine, sandbox, scorer, n=n, turns=evaluation.turns,
                          searches=evaluation.searches, selection=selection, sampling=sampling, seed=cfg.seed,
                          progress=True, finished_rows=finished,
                          on_turn=lambda made: save_checkpoint(checkpoint, made),
                          chunk_draws=4 * cfg.engine.batch_size,
                          stop_at_public_pass=evaluation.stop_at_public_pass)
    summary = summarize(rows, seed=cfg.seed)
    meta = {"method": label, "dataset": dataset, "n": n, "selection": selection,
            "turns": evaluation.turns, "searches": evaluation.searches,
            "details": {"generator": model_hash(cfg, generator), "verifier": verifier.hash if verifier else "",
                        "seed": cfg.seed, "temperature": sampling.temperature,
                        "max_new_tokens": sampling.max_new_tokens, "wall_s": round(time.perf_counter() - started, 2),
                        "resumed_after_turn": 0 if finished is None else int(finished["turn"].max() or 0),
                        "reused_generate_calls": memoized.reused_calls,
                        "reused_conversations": memoized.reused_conversations}}
    inputs = [problems.hash, model_hash(cfg, generator)] + ([verifier.hash] if verifier is not None else [])
    # One folder per method: two methods can produce identical rows (an arm that had nothing to
    # train on is the base model), and one content-addressed file would carry only one manifest.
    artifact = store.put_frame(rows, stage=stage, config_hash=cfg.section_digest(*SECTIONS),
                               inputs=inputs, extra={"evaluation": meta, "metrics": summary})
    checkpoint.unlink(missing_ok=True)  # the rows are stored: nothing is left to resume
    remove_empty_folders(folder, up_to=folder.parents[2])
    return artifact


def remove_empty_folders(folder: Path, up_to: Path) -> None:
    """Remove `folder` and its parents below `up_to` while they are empty."""
    while folder != up_to and folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
        folder = folder.parent


# The Prefect task: cached on the config sections read and the input artifacts' hashes.
evaluate_task = stage_task(evaluate_stage, name="evaluate", sections=SECTIONS,
                           gpu=True)


def alias_evaluation_stage(cfg, root: str, evaluation, label: str, turns: int | None = None):
    """Store-level stage: an evaluation's rows under another method's name, cut to `turns` if given.

    For a method whose generator and verifier are those of an evaluation already made (an
    arm that had nothing to train on is the base model): the search would repeat it exactly.
    With `turns`, the rows of turns 1..turns and their summary: the first t turns of a
    T-turn search are the t-turn search (the same conversations, seeds and selections).
    """
    from mucode.artifacts import ArtifactStore

    store = ArtifactStore(root)
    manifest = store.manifest(evaluation)
    original = manifest["evaluation"]
    rows, summary = store.get_frame(evaluation), manifest["metrics"]
    if turns is None or turns == original["turns"]:
        meta = {**original, "method": label, "details": {**original["details"], "same_as": original["method"]}}
    else:
        if not 1 <= turns < original["turns"]:
            raise EvaluationError(f"cannot cut a {original['turns']}-turn evaluation to {turns} turns")
        rows = rows.filter(pl.col("turn") <= turns)
        summary = summarize(rows, seed=cfg.seed)
        meta = {**original, "method": label, "turns": turns,
                "details": {**original["details"], "first_turns_of": original["method"]}}
    return store.put_frame(rows, stage=f"evaluate-{label}", config_hash=manifest.get("config_hash", ""),
                           inputs=[evaluation.hash], extra={"evaluation": meta, "metrics": summary})


alias_evaluation_task = stage_task(alias_evaluation_stage, name="evaluate-alias", sections=("seed",))
