"""Problems stage: one dataset split, with its public and private tests, as an artifact.

Stores what `mucode.data.load_problems` returns so every later stage (and every cached
re-run) reads the same problems by hash. It does not fetch anything itself.
"""

from __future__ import annotations

from mucode.orchestration import stage_task


# The config sections the stage reads: its cache key and its manifest's config hash.
SECTIONS = ("data",)


def problems_stage(cfg, root: str, dataset: str, split: str, limit: int | None, sample: int | None = None):
    """`sample`: problems drawn by `cfg.data.train_sample_seed` before the limit (None: all)."""
    from mucode.artifacts import ArtifactStore
    from mucode.data import load_problems

    frame = load_problems(dataset, split, data_dir=cfg.data.data_dir, limit=limit, sample=sample,
                          sample_seed=cfg.data.train_sample_seed)
    return ArtifactStore(root).put_frame(frame, stage="problems", config_hash=cfg.section_digest(*SECTIONS),
                                         extra={"dataset": dataset, "split": split, "limit": limit,
                                                "sample": sample})


# The Prefect task: cached on the config sections read and the input artifacts' hashes.
problems_task = stage_task(problems_stage, name="problems", sections=SECTIONS)
