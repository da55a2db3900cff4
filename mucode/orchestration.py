"""Prefect plumbing for mucode stages.

`stage_task` turns a store-level stage function `fn(cfg, root, ...) -> Artifact` into a
Prefect task whose cache key is the stage's source, the digest of the code it runs (its
module and every project module it imports, `mucode.code_digest`) and its inputs, with the
config reduced to a digest of the sections the stage reads and every `Artifact` reduced to
its content hash, so the key never depends on the flow run. Results are persisted; a cached result
whose artifact is missing or corrupt is recomputed. GPU stages run in a fresh process so
their GPU memory is released. Stages publish a table of their manifest metrics (progress bars
are `mucode.progress`); each computed (not cached) stage appends its wall time to
ROOT/timings.jsonl, with its peak RSS (`mucode.peak_rss`) and the time of its earlier attempts
that did not finish (`mucode.attempts`). `run_batches` fans a function out over a Dask cluster.

This module does not define or wire stages (`tasks/`, `flows/`) and does not know what the
artifacts contain.
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import functools
import inspect
import multiprocessing
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
from prefect import Task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import INPUTS, NO_CACHE, TASK_SOURCE, CachePolicy
from prefect.context import FlowRunContext, TaskRunContext
from prefect.logging import get_run_logger
from prefect.results import ResultStore

from mucode.artifacts import Artifact, ArtifactStore, append_json_line, read_json_lines, root_url
from mucode.attempts import stage_attempt
from mucode.code_digest import run_as_stage, stage_code
from mucode.config import Config
from mucode.freed_memory import return_freed_memory
from mucode.hashing import sha256_hex
from mucode.peak_rss import gib, peak_rss_bytes, reset_peak_rss
from mucode.run_summary import note_stage_outcome

StageFunction = Callable[..., Any]
TIMINGS_FILE = "timings.jsonl"


class OrchestrationError(RuntimeError):
    """A stage cannot be wrapped or run as asked; the message is one line."""


def experiment_root(cfg: Config) -> str:
    """The experiment directory `{run_dir}/{name}`, absolute so a cache key names one place."""
    root = f"{cfg.run_dir.rstrip('/')}/{cfg.name}"
    return root if "://" in root else str(Path(root).resolve())


def artifact_at(path: str, root: str) -> Artifact:
    """The reference to a stored artifact, rebuilt from the manifest beside it (one-line error if absent)."""
    return ArtifactStore(root).ref(path if "://" in path else str(Path(path).resolve()))


# -- cache keys ---------------------------------------------------------------------------

def cache_token(value: Any, sections: tuple[str, ...] | None) -> Any:
    """A JSON-able stand-in for a task input: what the cached result depends on."""
    if isinstance(value, Config):
        return {"config": value.section_digest(*sections) if sections is not None else value.digest()}
    if isinstance(value, Artifact):
        # The content hash names the data; where it lives is covered by `root`.
        return {"artifact": value.hash, "kind": value.kind}
    if isinstance(value, (list, tuple)):
        return [cache_token(item, sections) for item in value]
    if isinstance(value, dict):
        return {str(key): cache_token(item, sections) for key, item in value.items()}
    return value


def result_is_usable(result: Any, root: str) -> bool:
    """True when every Artifact in a stage result is intact (a str result is a file path)."""
    if isinstance(result, Artifact):
        return ArtifactStore(root).is_valid(result)
    if isinstance(result, (list, tuple)):
        return all(result_is_usable(item, root) for item in result)
    if isinstance(result, str):
        filesystem, path = fsspec.core.url_to_fs(result)
        return filesystem.exists(path)
    return True


def expire_stale_record(store: ResultStore, key: str, root: str) -> bool:
    """Expire the cached record under `key` if its artifacts are gone; True when it did.

    Prefect treats an expired record as absent (`ResultStore.exists`), so the task runs
    again and writes a fresh record under the same key. Expiring, rather than deleting,
    works on every result storage Prefect supports.
    """
    if not store.exists(key):
        return False
    try:
        usable = result_is_usable(store.read(key).result, root)
    except Exception:  # an unreadable record (e.g. a class that moved) is as stale as a lost artifact
        usable = False
    if usable:
        return False
    store.write(obj=None, key=key, expiration=dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=1))
    return True


@dataclass
class StageCachePolicy(CachePolicy):
    """INPUTS + TASK_SOURCE over stable input tokens and the stage's code digest, dropping
    records whose artifacts are gone."""

    sections: tuple[str, ...] | None = None
    code_module: str | None = None  # the stage function's module: its code digest joins the key

    def compute_key(self, task_ctx: TaskRunContext, inputs: dict[str, Any],
                    flow_parameters: dict[str, Any], **kwargs: Any) -> str | None:
        tokens = {name: cache_token(value, self.sections) for name, value in (inputs or {}).items()}
        key = (INPUTS + TASK_SOURCE).compute_key(task_ctx=task_ctx, inputs=tokens,
                                                 flow_parameters=flow_parameters, **kwargs)
        if key is not None and self.code_module is not None:
            # TASK_SOURCE sees the stage function only; the code digest covers all it calls.
            key = sha256_hex(f"{key}:{stage_code(self.code_module).digest}")
        if key is not None and task_ctx is not None and "root" in (inputs or {}):
            if expire_stale_record(task_ctx.result_store, key, str(inputs["root"])):
                get_run_logger().warning(
                    "cached result of %s names a missing or corrupt artifact: recomputing", task_ctx.task.name)
        return key


# -- running a stage ------------------------------------------------------------------------

def _call(fn: StageFunction, args: tuple, kwargs: dict) -> Any:
    return fn(*args, **kwargs)


def run_in_subprocess(fn: StageFunction, *args: Any, **kwargs: Any) -> Any:
    """Run `fn(*args, **kwargs)` in a fresh spawned process and return its result.

    The process exits afterwards, so everything it held (GPU memory, CUDA context) is freed.
    `fn` and its arguments must be picklable (a module-level function).
    """
    context = multiprocessing.get_context("spawn")  # fork would inherit an initialised CUDA
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        try:
            return pool.submit(_call, fn, args, kwargs).result()
        except concurrent.futures.process.BrokenProcessPool:
            raise OrchestrationError(
                f"the subprocess running {fn.__name__} died (killed, or out of memory): see the worker log") from None


def measure_peak_rss(fn: StageFunction, args: tuple, kwargs: dict) -> tuple[Any, int | None]:
    """`fn(*args, **kwargs)` and the peak RSS of this process while it ran (None where unmeasurable).

    Stages run one after another in a flow, so the window is the stage's own. Afterwards the
    heap's free pages go back to the kernel, so the next stage does not start from this one's high.
    """
    measurable = reset_peak_rss()
    result = fn(*args, **kwargs)
    peak = peak_rss_bytes() if measurable else None
    return_freed_memory()
    return result, peak


def in_a_run() -> bool:
    """Inside a Prefect flow or task run: the one check before anything talks to the API."""
    return TaskRunContext.get() is not None or FlowRunContext.get() is not None


def artifact_key(*parts: str) -> str:
    """A Prefect artifact key (lowercase letters, digits and single dashes) from free text."""
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9]+", "-", "-".join(parts).lower())).strip("-")


def _summarise(value: Any) -> Any:
    if isinstance(value, list) and value and all(isinstance(item, (int, float)) for item in value):
        return f"{value[0]:.4g} → {value[-1]:.4g} ({len(value)} points)"
    if isinstance(value, (dict, list)):
        return str(value)
    return value


def stage_table(root: str, result: Any) -> list[dict[str, Any]]:
    """One row per fact of each output artifact: size, hash, and the manifest's `metrics`."""
    artifacts = result if isinstance(result, (list, tuple)) else [result]
    store = ArtifactStore(root)
    rows: list[dict[str, Any]] = []
    for artifact in artifacts:
        if not isinstance(artifact, Artifact):
            continue
        manifest = store.manifest(artifact)
        facts = {"artifact": artifact.path, "kind": artifact.kind, "rows": artifact.rows,
                 "hash": artifact.hash, "config_hash": manifest.get("config_hash", ""),
                 "inputs": ", ".join(manifest.get("inputs", []))}
        facts.update(manifest.get("metrics", {}))
        rows.extend({"field": name, "value": _summarise(value)} for name, value in facts.items())
    return rows


def publish_stage_table(run_name: str, cfg: Config, root: str, result: Any) -> None:
    """Show a stage's output as a table artifact, key `{experiment}-{run name}` (no-op outside a run)."""
    if not in_a_run():
        return
    rows = stage_table(root, result)
    if rows:
        create_table_artifact(rows, key=artifact_key(cfg.name, run_name), description=f"{run_name} of {cfg.name}")


def record_timing(root: str, stage: str, run: str, wall_s: float, peak_bytes: int | None = None,
                  unfinished_s: float = 0.0) -> None:
    """Append `{stage, run, wall_s, unfinished_s, peak_rss_gib, finished}` to ROOT/timings.jsonl
    (a cache hit never gets here).

    Reports read it to show what each stage cost when it was computed, also after a resumed
    run: `unfinished_s` is the time of the earlier attempts of this stage run that were killed
    or failed (`mucode.attempts`), whose kept work this one resumed from. peak_rss_gib is the
    stage's own peak resident memory (None where it could not be measured).
    """
    append_json_line(root_url(root, TIMINGS_FILE),
                     {"stage": stage, "run": run, "wall_s": round(wall_s, 3), "unfinished_s": round(unfinished_s, 3),
                      "peak_rss_gib": gib(peak_bytes),
                      "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")})


def read_timings(root: str) -> list[dict[str, Any]]:
    """Every line of ROOT/timings.jsonl (empty when none)."""
    return read_json_lines(root_url(root, TIMINGS_FILE))


def _stage_run_name(stage: str) -> Callable[..., str]:
    def name(parameters: dict[str, Any]) -> str:
        details = [str(parameters[key]) for key in ("dataset", "label", "iteration") if parameters.get(key) is not None]
        return "-".join([stage, *details])

    return name


def stage_task(fn: StageFunction, *, name: str, retries: int = 0, retry_delay_seconds: float = 10.0,
               gpu: bool = False, sections: Sequence[str] | None = None,
               timeout_seconds: float | None = None) -> Task:
    """Wrap a store-level stage `fn(cfg, root, ...)` as a cached, persisted Prefect task.

    sections: the `Config` sections (or top-level keys) the stage reads; the cache key
        depends on those only, so experiments differing elsewhere share this stage. None
        means the whole config.
    gpu: run `fn` in a fresh process when `cfg.compute.num_gpus > 0` (in-process on CPU).
    retries: for failures a retry can fix (an engine that did not start, a Docker hiccup).
    Call it as a function, not as a decorator: a GPU subprocess imports `fn` by its name.
    """
    signature = inspect.signature(fn)
    parameters = list(signature.parameters)
    if parameters[:2] != ["cfg", "root"]:
        raise OrchestrationError(f"stage function {fn.__name__} must start with (cfg, root, ...); it has {parameters}")
    unknown = [section for section in sections or [] if section not in Config.model_fields]
    if unknown:
        raise OrchestrationError(f"stage {name}: unknown config sections {unknown}; "
                                 "use field names of Config in mucode/config.py")
    run_name = _stage_run_name(name)
    staged = functools.update_wrapper(functools.partial(run_as_stage, fn), fn)  # manifests name fn's code

    @functools.wraps(fn)  # keeps fn's signature and source, which Prefect's TASK_SOURCE hashes
    def run_stage(*args: Any, **kwargs: Any) -> Any:
        arguments = signature.bind(*args, **kwargs).arguments
        cfg, root = arguments["cfg"], arguments["root"]
        started = time.perf_counter()
        with stage_attempt(root, f"{name}/{run_name(arguments)}") as attempt:
            if gpu and cfg.compute.num_gpus > 0:
                result, peak = run_in_subprocess(measure_peak_rss, staged, args, kwargs)
            else:
                result, peak = measure_peak_rss(staged, args, kwargs)
        record_timing(root, name, run_name(arguments), time.perf_counter() - started, peak,
                      unfinished_s=attempt.unfinished_s if attempt is not None else 0.0)
        publish_stage_table(run_name(arguments), cfg, root, result)
        return result

    return Task(
        run_stage,
        name=name,
        task_run_name=run_name,
        cache_policy=StageCachePolicy(sections=tuple(sections) if sections is not None else None,
                                      code_module=fn.__module__),
        persist_result=True,
        retries=retries,
        retry_delay_seconds=retry_delay_seconds if retries else None,
        timeout_seconds=timeout_seconds,
        on_completion=[note_stage_outcome],  # cache hits too: the flow's summary table lists every stage
    )


# -- scale-out --------------------------------------------------------------------------------

def _apply_to_batch(fn: Callable[[Any], Any], batch: Any) -> Any:
    return fn(batch)


_batch_task = Task(_apply_to_batch, name="batch", cache_policy=NO_CACHE, persist_result=False)


def run_batches(fn: Callable[[Any], Any], batches: Sequence[Any], dask_address: str | None) -> list[Any]:
    """`[fn(batch) for batch in batches]`, on a Dask cluster when an address is given.

    With an address each batch is a Prefect task run on `prefect_dask.DaskTaskRunner`
    (visible in the UI); `fn` must be picklable and importable on the Dask workers.
    Results come back in input order. Without an address it runs here, in order.
    """
    if not dask_address:
        return [fn(batch) for batch in batches]
    from prefect_dask import DaskTaskRunner  # imported late: distributed is slow to import

    with DaskTaskRunner(address=dask_address) as runner:
        futures = [runner.submit(_batch_task, {"fn": fn, "batch": batch}) for batch in batches]
        return [future.result() for future in futures]
