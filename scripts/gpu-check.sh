#!/usr/bin/env bash
# The first run on a machine with NVIDIA GPUs: install the `gpu` extra (SGLang, DeepSpeed),
# then run one µCode iteration with evaluation on the bundled 0.5B coder model
# (configs/gpu-check.yaml: SGLang rollouts data-parallel over every visible GPU, verifier and
# fine-tune under `accelerate launch` on every visible GPU, ZeRO-3 when there are 2+), and
# print each stage's wall time, peak GPU memory and the pass rates.
#
# Expected time on one H200-class GPU: about 7 minutes (estimate, not yet measured: three
# SGLang starts of ~1 min each, two training launches of ~1-2 min, rollouts and evaluation
# of 32 problems in seconds). The run fails if it takes longer than 10 minutes.
# Anything missing (nvidia-smi, a GPU, a CUDA torch, the extra's install) fails with one
# line on stderr and exit code 1; nothing is skipped.
#
# Usage: bash scripts/gpu-check.sh        (after `make install` with a CUDA build of torch)
set -euo pipefail
cd "$(dirname "$0")/.."
BUDGET_S=600
PY="${PY:-.venv/bin/python}"

fail() {
    echo "gpu-check: $*" >&2
    exit 1
}

command -v nvidia-smi >/dev/null 2>&1 ||
    fail "nvidia-smi not found: this check needs an NVIDIA GPU and its driver"
gpu_list="$(nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader 2>/dev/null)" ||
    fail "nvidia-smi failed: the NVIDIA driver cannot reach a GPU (run nvidia-smi to see why)"
gpus="$(printf '%s\n' "$gpu_list" | grep -c . || true)"
[ "$gpus" -ge 1 ] || fail "nvidia-smi lists no GPU"
[ -x "$PY" ] || fail "$PY not found: run make install first (with a CUDA build of torch)"
"$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.device_count() > 0 else 1)' 2>/dev/null ||
    fail "torch in $PY sees no CUDA GPU: install a CUDA build of torch (see the Makefile), then rerun"
echo "gpu-check: $gpus GPU(s):"
printf '  %s\n' "$gpu_list"

echo "gpu-check: installing the gpu extra (SGLang, DeepSpeed)"
"$PY" -m pip install --quiet -e '.[gpu]' || fail "pip install -e '.[gpu]' failed: see pip's output above"
"$PY" -c 'import sglang, deepspeed' 2>/dev/null || fail "sglang or deepspeed does not import after installing the gpu extra"

distributed=none
if [ "$gpus" -ge 2 ]; then distributed=deepspeed-zero3; fi
out="runs/gpu-check-$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$out"
# Memory of every GPU twice a second, timestamps in UTC (what gpu_check_summary.py reads).
TZ=UTC nvidia-smi --query-gpu=timestamp,index,memory.used --format=csv,noheader,nounits -lms 500 \
    >"$out/gpu-memory.csv" 2>/dev/null &
sampler=$!
trap 'kill "$sampler" 2>/dev/null || true' EXIT

started=$SECONDS
timeout --signal=INT --kill-after=30 "$BUDGET_S" "$PY" -m mucode.flows.train --config configs/gpu-check.yaml \
    --override "run_dir=$out" --override "compute.num_gpus=$gpus" --override "engine.dp_size=$gpus" \
    --override "compute.distributed=$distributed" \
    --override "verifier.batch_size=$((2 * gpus))" --override "finetune.batch_size=$((2 * gpus))" ||
    fail "the run failed or exceeded ${BUDGET_S} s (exit $?): see its output above; artifacts in $out"
elapsed=$((SECONDS - started))

"$PY" scripts/gpu_check_summary.py "$out/gpu-check" "$out/gpu-memory.csv" || fail "no summary: see above"
echo "gpu-check: passed in ${elapsed} s (budget ${BUDGET_S} s) on $gpus GPU(s); artifacts in $out"
