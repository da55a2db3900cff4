"""Train and evaluate one more arm beside a comparison, on the base rollouts and verifier it already has.

`mucode-compare` trains every arm from one shared set of base rollouts and one verifier. An
arm thought of later (the diagnostic `mucode-solved`, say) needs only its own relabel,
fine-tune and evaluations: this runs those through `mucode-stage` by path, on the artifacts
the comparison's first arm recorded for iteration 1, evaluates the new generator at N = 1
with T turns wherever the base model was, and writes the compare report of those N = 1 rows
with the new arm among them (ROOT/report/compare.md: the comparison rewrites it when it next
runs, so copy it). It trains one iteration only and writes no arm state; a stage already
computed is a cache hit, so an interrupted run continues where it stopped.

    python scripts/add_arm.py --config configs/compare-cpu-qwen.yaml --set run_dir=/root/mucode-runs \
        --arm mucode-solved
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mucode.artifacts import ArtifactStore
from mucode.compare import reuses_rows
from mucode.flows.compare import arm_state_root
from mucode.flows.experiment import load_experiment, read_iterations
from mucode.flows.stage import mucode_stage


def base_evaluations(store: ArtifactStore, turns: int) -> list[dict]:
    """Manifests of the comparison's own N = 1, T-turn evaluations (not aliases), oldest first."""
    found = []
    for manifest in store.list():
        meta = manifest.get("evaluation")
        if meta and meta["n"] == 1 and meta["turns"] == turns and not reuses_rows(meta.get("details", {})):
            found.append(manifest)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="section.key=value")
    parser.add_argument("--arm", required=True, help="the relabel policy of the new arm, e.g. mucode-solved")
    args = parser.parse_args(argv)
    cfg, root = load_experiment(args.config, args.overrides)
    if args.arm in cfg.compare.arms:
        raise SystemExit(f"arm {args.arm} is already in compare.arms: mucode-compare trains it")
    trained = read_iterations(arm_state_root(root, cfg.compare.arms[0]))
    if not trained:
        raise SystemExit(f"{root}: arm {cfg.compare.arms[0]} has no completed iteration: run mucode-compare first")
    shared = trained[0]
    arm_overrides = [*args.overrides, f"relabel.policy={args.arm}"]

    def stage(name: str, inputs: dict, options: dict | None = None) -> str:
        return mucode_stage(stage=name, config=args.config, overrides=arm_overrides, inputs=inputs, options=options)

    sft = stage("relabel", {"aggregated": shared.aggregated.path, "problems": shared.problems.path,
                            "verifier": shared.verifier.path})
    generator = stage("finetune", {"sft": sft})
    store = ArtifactStore(root)
    existing = base_evaluations(store, cfg.evaluation.turns)
    problems_by_dataset = {m["evaluation"]["dataset"]: m["inputs"][0] for m in existing
                           if m["evaluation"]["method"] == "base"}
    problems_paths = {Path(m["path"]).name.removesuffix(".parquet"): m["path"] for m in store.list("problems")}
    added = [stage("evaluate", {"problems": problems_paths[problems], "generator": generator, "verifier": None},
                   {"selection": "random", "n": 1, "label": args.arm})
             for problems in problems_by_dataset.values()]
    others = [m["path"] for m in existing if m["evaluation"]["method"] != args.arm]
    report = stage("compare", {"evaluations": others + added}, {"phases": {}})
    print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
