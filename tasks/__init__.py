"""The stages of a µCode iteration, one module each; this registry maps names to them.

`stage_function(name)` is the store-level function (`<stage>_stage(cfg, root, ...)`),
`stage_task(name)` its Prefect task (`<stage>_task`). Modules are imported on demand, so
naming a stage does not load torch.
"""

from __future__ import annotations

import importlib

STAGES = ("problems", "rollout", "execute", "aggregate", "verifier", "relabel", "finetune", "evaluate", "report",
          "compare")


class UnknownStageError(ValueError):
    pass


def _module(name: str):
    if name not in STAGES:
        raise UnknownStageError(f"unknown stage '{name}': choose one of {', '.join(STAGES)}")
    return importlib.import_module(f"mucode.tasks.{name}")


def stage_function(name: str):
    return getattr(_module(name), f"{name}_stage")


def stage_task(name: str):
    return getattr(_module(name), f"{name}_task")
