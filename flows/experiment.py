"""An experiment as the flows see it: its config, its directory, its completed iterations.

The completed iterations live in `state.json` in the experiment directory, rewritten
atomically (temporary file, then rename) each time an iteration completes, so a reader
never sees half a file and `mucode-iteration` can continue from the latest one. This module
runs no stage and talks to no Prefect server.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import Field

import fsspec

from mucode.artifacts import Artifact, write_atomically
from mucode.config import Config, load_config
from mucode.orchestration import experiment_root

STATE_FILE = "state.json"
REPOSITORY = Path(__file__).resolve().parents[1]


def config_choices() -> tuple[str, ...]:
    """The repository's configs/*.yaml, as paths relative to the repository (what `config` takes)."""
    return tuple(sorted(f"configs/{path.name}" for path in (REPOSITORY / "configs").glob("*.yaml"))) or (
        "configs/smoke.yaml",)


# The flows' `config` parameter: a drop-down of configs/*.yaml (listed when `prefect deploy`
# reads the flow) or any other path.
ConfigChoice = Union[
    Annotated[Literal[config_choices()], Field(title="configs/*.yaml")],  # type: ignore[valid-type]
    Annotated[str, Field(title="another path")],
]


def load_experiment(config: str, overrides: list[str] | dict[str, Any] | None) -> tuple[Config, str]:
    """The validated config (one-line ConfigError when wrong) and the experiment directory."""
    cfg = load_config(config, overrides)
    return cfg, experiment_root(cfg)


@dataclass(frozen=True)
class IterationRecord:
    """What one completed iteration left behind, as artifact references."""

    iteration: int
    problems: Artifact
    aggregated: Artifact
    verifier: Artifact
    sft: Artifact
    generator: Artifact | None  # None: no policy data yet, so the generator is still the base model
    config_digest: str = ""
    completed: str = ""
    rollouts: Artifact | None = None  # absent from state files written before mucode-stage read them
    labelled: Artifact | None = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> "IterationRecord":
        artifacts = {name: Artifact(**raw[name]) if raw.get(name) else None
                     for name in ("problems", "aggregated", "verifier", "sft", "generator", "rollouts", "labelled")}
        return cls(iteration=int(raw["iteration"]), config_digest=raw.get("config_digest", ""),
                   completed=raw.get("completed", ""), **artifacts)


def read_iterations(root: str) -> list[IterationRecord]:
    """Completed iterations of the experiment, by iteration number (empty when none)."""
    filesystem, path = fsspec.core.url_to_fs(f"{root}/{STATE_FILE}")
    if not filesystem.exists(path):
        return []
    try:
        raw = json.loads(filesystem.cat_file(path))
        records = [IterationRecord.from_json(entry) for entry in raw["iterations"]]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise ValueError(f"{root}/{STATE_FILE} is unreadable ({error}): delete it and re-run mucode-train") from None
    return sorted(records, key=lambda record: record.iteration)


def latest_iteration(root: str) -> IterationRecord | None:
    records = read_iterations(root)
    return records[-1] if records else None


def record_iteration(root: str, record: IterationRecord) -> None:
    """Add (or replace) an iteration in the state file, atomically."""
    stamped = dataclasses.replace(record, completed=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
    existing = read_iterations(root)
    replaced = next((old for old in existing if old.iteration == record.iteration), None)
    # Later iterations built on the one replaced: they stay only if it produced the same data.
    same = replaced is not None and (_hash(replaced.generator), replaced.aggregated.hash) == (
        _hash(record.generator), record.aggregated.hash)
    kept = [old for old in existing if old.iteration < record.iteration or (same and old.iteration > record.iteration)]
    payload = json.dumps({"iterations": [entry.to_json() for entry in [*kept, stamped]]}, indent=2).encode()
    write_atomically(f"{root}/{STATE_FILE}", payload)


def _hash(artifact: Artifact | None) -> str:
    return artifact.hash if artifact is not None else ""
