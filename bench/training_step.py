"""Seconds and peak RSS of one optimizer step on CPU, for each training lever, side by side.

Each variant (full or LoRA; bf16 autocast; gradient checkpointing; only the top k decoder
layers trained) runs in its own process, so its peak RSS (VmHWM) is its own; the variants
are run in turn, `--rounds` times, interleaved, because the machine is shared. Each process
loads the model, wraps it with `mucode.training.trainable_model` (what the stages use),
and takes `--steps` AdamW steps on a fixed random batch (`--batch` × `--seq` tokens, the
loss on every position) through TRL's fused, tiled LM head, as the SFT stage's SFTTrainer
does (no full-vocabulary logits); the last step is the one reported, the first pays for
allocation and optimizer state. Besides wall seconds it reports the process's CPU seconds per
step (all its threads), which other jobs on a shared machine disturb much less. A benchmark, not a test: nothing is asserted. Run

    python bench/training_step.py --model DIR [--variants full lora lora+bf16 ...] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

DEFAULT_VARIANTS = ["full", "full+ckpt", "full+bf16", "full+top4", "lora", "lora+ckpt", "lora+bf16", "lora+top4",
                    "lora+top4+bf16"]


def parse_variant(variant: str) -> dict:
    """'lora+top4+bf16' → {method: lora, top_layers: 4, bf16: True, checkpointing: False}."""
    method, *levers = variant.split("+")
    top = [int(lever[3:]) for lever in levers if lever.startswith("top")]
    unknown = [lever for lever in levers if lever not in ("bf16", "ckpt") and not lever.startswith("top")]
    if method not in ("full", "lora") or unknown:
        raise SystemExit(f"bad variant {variant!r}: full|lora followed by +bf16, +ckpt, +topK")
    return {"method": method, "top_layers": top[0] if top else None, "bf16": "bf16" in levers,
            "checkpointing": "ckpt" in levers}


def peak_rss_gib() -> float:
    """This process's peak resident set (VmHWM), GiB."""
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 2**20


def measure(model_path: str, variant: str, batch: int, seq: int, steps: int) -> dict:
    """Load, wrap, and time `steps` optimizer steps of one variant (run in a child process)."""
    import contextlib

    import torch
    from transformers import AutoModelForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    from mucode.config import LoraSettings
    from mucode.training import trainable_model

    lever = parse_variant(variant)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    model.config.use_cache = False
    add_fused_lm_head(model)  # before peft wraps it, as SFTTrainer does
    if lever["checkpointing"]:
        # Non-reentrant: needs no input that requires grad, so frozen bottom layers stay outside the graph.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = trainable_model(model, lever["method"], LoraSettings(), lever["top_layers"], "CAUSAL_LM")
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-5)
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, model.config.vocab_size, (batch, seq), generator=generator)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if lever["bf16"] else contextlib.nullcontext()
    step_s, cpu_s = [], []
    for _ in range(steps):
        started, cpu_started = time.perf_counter(), time.process_time()
        with autocast:
            loss = model(input_ids=input_ids, labels=input_ids, fused_lm_head=True).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step_s.append(time.perf_counter() - started)
        cpu_s.append(time.process_time() - cpu_started)
    return {"variant": variant, "step_s": step_s, "cpu_s": cpu_s, "peak_rss_gib": peak_rss_gib(),
            "trainable_params": sum(p.numel() for p in trainable), "loss": float(loss)}


def run_child(args: argparse.Namespace, variant: str) -> dict:
    command = [sys.executable, __file__, "--model", args.model, "--batch", str(args.batch), "--seq", str(args.seq),
               "--steps", str(args.steps), "--child", variant]
    completed = subprocess.run(command, capture_output=True, text=True)
    lines = [line for line in completed.stdout.splitlines() if line.startswith("RESULT ")]
    if completed.returncode != 0 or not lines:
        tail = (completed.stderr.strip().splitlines() or ["no output"])[-1]
        return {"variant": variant, "error": f"exit {completed.returncode}: {tail}"}
    return json.loads(lines[-1].removeprefix("RESULT "))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a model directory (e.g. the converted Qwen2.5-Coder-0.5B)")
    parser.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(measure(args.model, args.child, args.batch, args.seq, args.steps)), flush=True)
        return
    for variant in args.variants:
        parse_variant(variant)  # fail before any model loads
    results: dict[str, list[dict]] = {variant: [] for variant in args.variants}
    for round_index in range(args.rounds):
        for variant in args.variants:
            result = run_child(args, variant)
            results[variant].append(result)
            print(f"round {round_index + 1} {json.dumps(result)}", file=sys.stderr, flush=True)
    reference = None
    print(f"one AdamW step, batch {args.batch} x {args.seq} tokens, last of {args.steps} steps, "
          f"{args.rounds} round(s); median over rounds")
    print(f"{'variant':<18}{'s/step':>9}{'vs first':>10}{'tok/s':>8}{'CPU s/step':>12}{'vs first':>10}"
          f"{'peak GiB':>10}{'trainable':>12}")
    for variant, runs in results.items():
        good = [run for run in runs if "error" not in run]
        if not good:
            print(f"{variant:<18} failed: {runs[0]['error']}")
            continue
        seconds = statistics.median(run["step_s"][-1] for run in good)
        cpu_seconds = statistics.median(run["cpu_s"][-1] for run in good)
        reference = reference or (seconds, cpu_seconds)
        peak = max(run["peak_rss_gib"] for run in good)
        print(f"{variant:<18}{seconds:>9.1f}{reference[0] / seconds:>9.2f}x{args.batch * args.seq / seconds:>8.0f}"
              f"{cpu_seconds:>12.1f}{reference[1] / cpu_seconds:>9.2f}x{peak:>10.2f}"
              f"{good[0]['trainable_params'] / 1e6:>11.1f}M")


if __name__ == "__main__":
    main()
