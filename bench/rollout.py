"""Rollout-stage throughput against raw batched `generate` of the same engine.

For each batch size, runs the rollout stage (multi-turn, sandbox in the loop) on a few MBPP
train problems, then replays exactly the prompts it generated for through the engine's plain
`model.generate` (`generate_raw`, in the given order, no bucketing) at the same batch size.
Prints generated tokens/s of both and their ratio. A benchmark, not a test: nothing is
asserted; run `python bench/rollout.py [--problems 8 --rollouts 4 --turns 2 --max-new-tokens 64]`.
"""

from __future__ import annotations

import argparse
import json
import time

from mucode.data import load_problems
from mucode.engines import SamplingParams, make_engine
from mucode.models import resolve_model
from mucode.sandbox import make_sandbox
from mucode.tasks.rollout import run_rollouts


def raw_tokens_per_s(engine, conversations, batch_size: int, sampling: SamplingParams) -> float:
    prompts = engine.prompt_token_ids(conversations)
    before, started = engine.tokens_generated, time.perf_counter()
    for start in range(0, len(prompts), batch_size):
        engine.generate_raw(prompts[start:start + batch_size], sampling)
    return (engine.tokens_generated - before) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=8)
    parser.add_argument("--rollouts", type=int, default=4)
    parser.add_argument("--turns", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()

    problems = load_problems("mbpp", "train", data_dir=args.data_dir, limit=args.problems)
    model = resolve_model("bundled:smollm2-135m-instruct")
    sampling = SamplingParams(temperature=0.7, top_p=1.0, max_new_tokens=args.max_new_tokens, seed=0)
    print(f"{args.problems} MBPP train problems x {args.rollouts} rollouts x <= {args.turns} turns, "
          f"max_new_tokens {args.max_new_tokens}, bundled SmolLM2-135M, hf engine on CPU")
    print(f"{'batch':>5} {'turns':>6} {'rollout tok/s':>14} {'raw tok/s':>10} {'ratio':>6}")
    with make_sandbox("auto") as sandbox:
        for batch_size in args.batch_sizes:
            with make_engine("hf", model, batch_size=batch_size) as engine:
                engine.generate([[{"role": "user", "content": "warm up"}]], 1, SamplingParams(max_new_tokens=4))
                before, started = engine.tokens_generated, time.perf_counter()
                frame = run_rollouts(problems, engine, sandbox, num_rollouts=args.rollouts, max_turns=args.turns,
                                     sampling=sampling, chunk_size=4 * batch_size)
                rollout_s = time.perf_counter() - started
                rollout_rate = (engine.tokens_generated - before) / rollout_s
                # The same requests the stage made: turn-1 prompts once per sample, later turns once each.
                conversations = [json.loads(text) for text in frame["prompt_messages"]]
                raw_rate = raw_tokens_per_s(engine, conversations, batch_size, sampling)
            print(f"{batch_size:>5} {frame.height:>6} {rollout_rate:>14.1f} {raw_rate:>10.1f} {rollout_rate / raw_rate:>6.2f}")


if __name__ == "__main__":
    main()
