#!/usr/bin/env bash
# The base bundled model's evaluation numbers (the "Multi-turn Instruct" rows of Table 1):
# HumanEval (164) and MBPP test (500), multi-turn N=1 greedy and Best-of-N N=5 with `pt`
# selection, T=3, up to 1000 new tokens, on CPU with the hf engine and the local sandbox.
#
#   scripts/eval_base.sh                      # everything; hours on 2 cores (see the report)
#   LIMIT=10 OUT=runs/base-eval-10 scripts/eval_base.sh   # a timing run
#
# Settings (environment): OUT (runs/base-eval), LIMIT (all problems), SEARCHES for BoN
# (1; the paper uses 10), MAX_NEW_TOKENS (1000), DATASETS ("humaneval mbpp"), RUNS
# ("n1-greedy n5-pt"), BATCH (32: the hf batch size; on 2 cores batch 32 decodes ~3x the
# tokens/s of batch 8). The problems, evaluate and report stages run over the artifacts of OUT:
# a finished run (an evaluate artifact of the same settings and problems) is skipped, and an
# interrupted one resumes at its last finished turn (the evaluate stage's turn checkpoint), so
# rerun after a crash. Writes OUT/artifacts/ (the problems and one evaluate artifact per run,
# its summary in the manifest) and OUT/report.md, the report of every run stored in OUT.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-runs/base-eval} LIMIT=${LIMIT:-} SEARCHES=${SEARCHES:-1} MAX_NEW_TOKENS=${MAX_NEW_TOKENS:-1000} \
DATASETS=${DATASETS:-"humaneval mbpp"} PYTHON=${PYTHON:-.venv/bin/python} RUNS=${RUNS:-"n1-greedy n5-pt"} \
BATCH=${BATCH:-32}
# Offline machines: the datasets folder beside the checkout, as in the Makefile.
if [ -z "${MUCODE_DATA_DIR:-}" ] && [ -f ../shared/data/mbpp.jsonl ]; then MUCODE_DATA_DIR=$(cd ../shared/data && pwd); fi
export OUT LIMIT SEARCHES MAX_NEW_TOKENS DATASETS RUNS BATCH MUCODE_DATA_DIR

"$PYTHON" - <<'EOF'
import os
import time

from mucode.artifacts import ArtifactStore
from mucode.config import load_config
from mucode.tasks.evaluate import SECTIONS, evaluate_stage
from mucode.tasks.problems import problems_stage
from mucode.report import build_report

METHOD = "Multi-turn Instruct"
out = os.environ["OUT"]
store = ArtifactStore(out)
settings = ["data.eval_limit=" + (os.environ["LIMIT"] or "null"), "evaluation.turns=3",
            f"evaluation.sampling.max_new_tokens={os.environ['MAX_NEW_TOKENS']}", "sandbox.timeout_s=10.0",
            f"engine.batch_size={os.environ['BATCH']}"]
runs = {  # name: (N, searches, temperature); greedy N=1 is deterministic, one search suffices
    "n1-greedy": (1, 1, 0.0),
    "n5-pt": (5, int(os.environ["SEARCHES"]), 0.7),
}


def finished(cfg, problems, n):
    """The evaluate artifact of this run made before (same settings, problems and N), or None."""
    for manifest in reversed(store.list(f"evaluate-{METHOD}")):
        if (manifest["config_hash"], manifest["inputs"][0], manifest["evaluation"]["n"]) == (
                cfg.section_digest(*SECTIONS), problems.hash, n):
            return store.ref(manifest["path"])
    return None


for dataset in os.environ["DATASETS"].split():
    for name in os.environ["RUNS"].split():
        n, searches, temperature = runs[name]
        started = time.perf_counter()
        cfg = load_config("configs/smoke.yaml", [*settings, f"evaluation.searches={searches}",
                                                 f"evaluation.sampling.temperature={temperature}"])
        problems = problems_stage(cfg, out, dataset, cfg.data.eval_split, limit=cfg.data.eval_limit)
        evaluation = finished(cfg, problems, n)
        if evaluation is not None:
            print(f"{dataset} {name}: done before, kept -> {evaluation.path}", flush=True)
        else:
            evaluation = evaluate_stage(cfg, out, problems, None, None, "pt", n, METHOD)
            bon = store.manifest(evaluation)["metrics"]["bon@3"]
            print(f"{dataset} {name}: BoN@3 {100 * bon:.1f}% in {time.perf_counter() - started:.0f}s"
                  f" -> {evaluation.path}", flush=True)
print(build_report(out))  # every run stored in OUT, this invocation's or earlier ones
EOF
