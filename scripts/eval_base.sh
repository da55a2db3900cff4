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
# tokens/s of batch 8). A finished run (its meta.json exists) is skipped, and an interrupted one
# resumes at its last finished turn (the evaluation's turn checkpoint), so rerun after a crash.
# Writes OUT/eval/<dataset>-<run>/ (rows.parquet, summary.json, meta.json) and OUT/report.md.
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
from pathlib import Path

from mucode.config import load_config
from mucode.report import build_report
from mucode.tasks.evaluate import evaluate_to_dir

out = Path(os.environ["OUT"])
limit = int(os.environ["LIMIT"]) if os.environ["LIMIT"] else None
cfg = load_config("configs/smoke.yaml", [
    "data.eval_limit=null", f"evaluation.sampling.max_new_tokens={os.environ['MAX_NEW_TOKENS']}",
    "sandbox.timeout_s=10.0", f"engine.batch_size={os.environ['BATCH']}",
])
runs = {  # name: (N, searches, temperature); greedy N=1 is deterministic, one search suffices
    "n1-greedy": (1, 1, 0.0),
    "n5-pt": (5, int(os.environ["SEARCHES"]), 0.7),
}
for dataset in os.environ["DATASETS"].split():
    for name in os.environ["RUNS"].split():
        n, searches, temperature = runs[name]
        started = time.perf_counter()
        directory = out / "eval" / f"{dataset}-{name}"
        if (directory / "meta.json").is_file():
            print(f"{dataset} {name}: done before, kept -> {directory}", flush=True)
            continue
        summary = evaluate_to_dir(cfg, generator=cfg.model.name, dataset=dataset, selection="pt", n=n, turns=3,
                                  searches=searches, limit=limit, temperature=temperature,
                                  method="Multi-turn Instruct", out=directory)
        print(f"{dataset} {name}: BoN@3 {100 * summary['bon@3']:.1f}% in {time.perf_counter() - started:.0f}s"
              f" -> {directory}", flush=True)
print(build_report(out))
EOF
