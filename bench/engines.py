"""Benchmark: tokens/s of the ct2 and openvino engines against transformers ``generate``, and HumanEval passes.

Every measurement runs in its own process (so one engine's memory and threads never touch
another's), and the rounds interleave the engines (hf, ct2 int8, ct2 int8_float32, hf, ...),
so a change in the machine's load hits all of them alike. ``--wait-policies`` adds a copy of
each engine per OpenMP wait policy (each process gets its own ``OMP_WAIT_POLICY``), and
``--allocators`` one per memory allocator (``jemalloc``: the process runs with Debian's
libjemalloc2 preloaded and never returning freed memory to the kernel). ``--prompt-copies K``
sends each user message K times in one turn, a long context like a later turn's. Per round
and engine:

  speed   greedy decoding of chat-templated HumanEval prompts (the project's first user
          message), 256 new tokens, at batch 1 (the first ``--batch1-prompts`` prompts one
          at a time) and at batch 8 (the first 8 prompts as one batch). hf is plain
          ``model.generate`` in float32 (``HFEngine.generate_raw``); ct2 decodes the same
          batches (``CT2Engine.generate_token_ids``). Tokens are real generated tokens
          (stop token counted, padding not), so an engine that stops earlier is not paid
          for idle rows. Each process also reports its peak RSS.
  passes  once per engine (greedy is deterministic): the first ``--problems`` HumanEval
          problems, single turn, through the evaluation's own search (prompt, code
          extraction, sandbox), greedy with ``--eval-max-new-tokens``.

  turns   (``--tasks turns``) the CPU engines' own ``generate`` as a multi-turn evaluation's
          later turns call it: T = 0.7, one sample each for the first ``--problems``
          problems, whose prompts are 1, 2 or 3 copies of the user message in turn (ragged
          lengths, as after a turn of feedback), ``SPEED_TOKENS`` new tokens, in calls of
          ``--turn-batch-size`` draws. Prefill is part of what is timed.
  throughput  (``--tasks throughput``) the ct2 engine's own ``generate`` as rollouts call
          it: T = 0.7, ``--samples`` per problem for the first ``--problems`` problems, at
          each of ``--batch-sizes``, to choose the batch size.

It prints every round, then the median tokens/s and its ratio to transformers per batch
size, the pass counts and the peak RSS. A benchmark, not a test: nothing is asserted.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/engines.py [--model bundled:qwen2.5-coder-0.5b-instruct]
        [--rounds 3] [--compute-types int8 int8_float32] [--problems 40] [--tasks speed passes]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

from mucode.engines import SamplingParams, make_engine

SPEED_TOKENS = 256


JEMALLOC = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"  # apt install libjemalloc2
# Keep freed memory for reuse: CTranslate2 reallocates every layer's KV cache at each step.
JEMALLOC_CONF = "dirty_decay_ms:-1,muzzy_decay_ms:-1,retain:true"


def humaneval_conversations(limit: int, copies: int = 1) -> list[list[dict[str, str]]]:
    """The first user message the evaluation sends for the first ``limit`` HumanEval problems
    (its text ``copies`` times over, for a context as long as a later turn's)."""
    from mucode.data import load_problems
    from mucode.environment import initial_conversation

    problems = load_problems("humaneval", "test", limit=limit)
    conversations = [initial_conversation(row["prompt"], row["public_tests"], "humaneval")
                     for row in problems.iter_rows(named=True)]
    return [[{**message, "content": "\n\n".join([message["content"]] * copies)} for message in conversation]
            for conversation in conversations]


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def open_engine(spec: dict, batch_size: int):
    if spec["engine"] == "hf":
        return make_engine("hf", spec["model"], batch_size=batch_size, dtype="float32")
    if spec["engine"] == "openvino":
        return make_engine("openvino", spec["model"], batch_size=batch_size)
    return make_engine("ct2", spec["model"], batch_size=batch_size, compute_type=spec["compute_type"])


def decode_batch(engine, prompts: list[list[int]], sampling: SamplingParams) -> None:
    """One batch decoded together, the engine's plain batched path."""
    from mucode.engines.sampling import plan_draws

    if hasattr(engine, "generate_raw"):
        engine.generate_raw(prompts, sampling)
    elif hasattr(engine, "generate_token_ids"):
        engine.generate_token_ids(prompts, sampling, seed=0)
    else:
        engine.generate_draws(prompts, plan_draws(prompts, 1, sampling.seed), sampling)


def measure_speed(spec: dict) -> dict:
    """tokens/s at each batch size, in this process."""
    sampling = SamplingParams(temperature=0.0, max_new_tokens=SPEED_TOKENS)
    rates, threads = {}, {}
    with open_engine(spec, batch_size=8) as engine:
        prompts = engine.prompt_token_ids(humaneval_conversations(max(8, spec["batch1_prompts"]),
                                                                  spec["prompt_copies"]))
        decode_batch(engine, [prompts[0]], SamplingParams(temperature=0.0, max_new_tokens=8))  # warm up
        for batch_size in spec["batch_sizes"]:
            count = spec["batch1_prompts"] if batch_size == 1 else batch_size
            before, started = engine.tokens_generated, time.perf_counter()
            for start in range(0, count, batch_size):
                decode_batch(engine, prompts[start : start + batch_size], sampling)
            rates[str(batch_size)] = (engine.tokens_generated - before) / (time.perf_counter() - started)
            threads[str(batch_size)] = engine.threads_in_use  # chosen per batch from the load
    return {"tokens_per_s": rates, "threads": threads, "peak_rss_gb": peak_rss_gb()}


def measure_throughput(spec: dict) -> dict:
    """tokens/s of ``engine.generate`` as rollouts use it (sampled, n per prompt), per batch size."""
    sampling = SamplingParams(temperature=0.7, max_new_tokens=SPEED_TOKENS, seed=0)
    conversations = humaneval_conversations(spec["problems"])
    rates = {}
    with open_engine(spec, batch_size=1) as engine:
        for batch_size in spec["batch_sizes"]:
            engine.batch_size = batch_size
            before, started = engine.tokens_generated, time.perf_counter()
            engine.generate(conversations, spec["samples"], sampling)
            rates[str(batch_size)] = (engine.tokens_generated - before) / (time.perf_counter() - started)
    return {"tokens_per_s": rates, "peak_rss_gb": peak_rss_gb()}


def measure_turns(spec: dict) -> dict:
    """tokens/s of ``engine.generate`` on ragged long prompts, sampled (a later evaluation turn)."""
    sampling = SamplingParams(temperature=0.7, max_new_tokens=SPEED_TOKENS, seed=0)
    by_copies = {copies: humaneval_conversations(spec["problems"], copies) for copies in (1, 2, 3)}
    conversations = [by_copies[1 + index % 3][index] for index in range(spec["problems"])]
    with open_engine(spec, batch_size=spec["turn_batch_size"]) as engine:
        prompt_tokens = sum(len(prompt) for prompt in engine.prompt_token_ids(conversations))
        started = time.perf_counter()
        engine.generate(conversations, 1, sampling)
        wall = time.perf_counter() - started
        tokens = engine.tokens_generated
    return {"tokens_per_s": tokens / wall, "wall_s": wall, "tokens": tokens, "prompt_tokens": prompt_tokens,
            "peak_rss_gb": peak_rss_gb()}


def measure_passes(spec: dict) -> dict:
    """HumanEval passes, greedy single turn, through the evaluation's search."""
    from mucode.data import load_problems
    from mucode.sandbox import make_sandbox
    from mucode.best_of_n import run_search

    problems = load_problems("humaneval", "test", limit=spec["problems"])
    sampling = SamplingParams(temperature=0.0, max_new_tokens=spec["eval_max_new_tokens"])
    started = time.perf_counter()
    with open_engine(spec, batch_size=8) as engine, make_sandbox("auto") as sandbox:
        rows = run_search(problems, engine, sandbox, None, n=1, turns=1, searches=1, selection="random",
                          sampling=sampling, seed=0)
        tokens = engine.tokens_generated
    passed = sorted(rows.filter(rows["private_passed"])["task_id"].to_list())
    return {"passed": passed, "problems": problems.height, "wall_s": time.perf_counter() - started,
            "tokens": tokens, "peak_rss_gb": peak_rss_gb()}


def run_child(spec: dict) -> dict:
    """Run one measurement in a fresh process; its last stdout line is the JSON result."""
    command = [sys.executable, __file__, "--child", json.dumps(spec)]
    env = dict(os.environ)
    policy = spec.get("wait_policy", "inherit")
    if policy == "unset":
        env.pop("OMP_WAIT_POLICY", None)
    elif policy != "inherit":
        env["OMP_WAIT_POLICY"] = policy
    if spec.get("allocator") == "jemalloc":
        if not os.path.isfile(JEMALLOC):
            raise SystemExit(f"{JEMALLOC} is missing: apt-get install libjemalloc2, or drop --allocators jemalloc")
        env["LD_PRELOAD"], env["MALLOC_CONF"] = JEMALLOC, JEMALLOC_CONF
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or [f"exit code {done.returncode}"]
        raise SystemExit(f"{label(spec)} failed: {tail[0]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def label(spec: dict) -> str:
    policy, allocator = spec.get("wait_policy", "inherit"), spec.get("allocator", "inherit")
    name = {"hf": "hf float32", "openvino": "openvino q8_0"}.get(spec["engine"]) or f"ct2 {spec['compute_type']}"
    return name + ("" if policy == "inherit" else f" omp={policy}") + ("" if allocator == "inherit" else f" {allocator}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="bundled:qwen2.5-coder-0.5b-instruct")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--compute-types", nargs="*", default=["int8", "int8_float32"],
                        help="ct2 compute types to measure (none: leave ct2 out)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--batch1-prompts", type=int, default=2)
    parser.add_argument("--problems", type=int, default=40)
    parser.add_argument("--eval-max-new-tokens", type=int, default=512)
    parser.add_argument("--pass-compute-types", nargs="+", default=["int8"])
    parser.add_argument("--tasks", nargs="+", choices=["speed", "passes", "throughput", "turns"],
                        default=["speed", "passes"])
    parser.add_argument("--openvino", action=argparse.BooleanOptionalAction, default=True,
                        help="include the openvino engine beside hf and ct2")
    parser.add_argument("--turn-batch-size", type=int, default=16, help="turns: draws per engine call")
    parser.add_argument("--samples", type=int, default=4, help="throughput: samples per problem")
    parser.add_argument("--wait-policies", nargs="+", default=["inherit"],
                        help="speed: OMP_WAIT_POLICY of each engine's processes (inherit, unset, PASSIVE, "
                             "ACTIVE); torch and CTranslate2 each load their own OpenMP runtime, which reads "
                             "it at import. Ratios are to hf float32 with the first policy and allocator")
    parser.add_argument("--allocators", nargs="+", choices=["inherit", "jemalloc"], default=["inherit"],
                        help="speed: the memory allocator of each engine's processes")
    parser.add_argument("--prompt-copies", type=int, default=1,
                        help="speed: each prompt's text this many times over (a later turn's long context)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        spec = json.loads(args.child)
        measure = {"passes": measure_passes, "speed": measure_speed, "throughput": measure_throughput,
                   "turns": measure_turns}[spec["task"]]
        result = measure(spec)
        print(json.dumps(result))
        return

    from mucode.models import resolve_model

    model = resolve_model(args.model)  # convert once here, not inside a timed child
    base = {"model": model, "batch_sizes": args.batch_sizes, "batch1_prompts": args.batch1_prompts,
            "problems": args.problems, "eval_max_new_tokens": args.eval_max_new_tokens, "samples": args.samples,
            "prompt_copies": args.prompt_copies, "turn_batch_size": args.turn_batch_size}
    variants = [{"wait_policy": policy, "allocator": allocator}
                for policy in args.wait_policies for allocator in args.allocators]
    engines = [{"engine": "hf", **variant} for variant in variants] + [
        {"engine": "ct2", "compute_type": kind, **variant} for kind in args.compute_types for variant in variants] + (
        [{"engine": "openvino", **variant} for variant in variants] if args.openvino else [])
    print(f"{args.model}: greedy, {SPEED_TOKENS} new tokens, chat-templated HumanEval prompts; "
          f"{args.rounds} interleaved rounds, one process per engine and round; "
          f"load average {os.getloadavg()[0]:.1f} at start (the machine may be shared)", flush=True)
    if "speed" in args.tasks:
        compare_speed(args, base, engines)
    if "passes" in args.tasks:
        compare_passes(args, base)
    if "turns" in args.tasks:
        compare_turns(args, base, [engine for engine in engines if engine["engine"] != "hf"])
    if "throughput" in args.tasks:
        for spec in [{**base, **engine, "task": "throughput"} for engine in engines if engine["engine"] == "ct2"]:
            result = run_child(spec)
            shown = "  ".join(f"batch {size}: {rate:6.1f} tok/s" for size, rate in result["tokens_per_s"].items())
            print(f"{label(spec)} generate, T=0.7, {args.problems} problems x {args.samples} samples, "
                  f"{SPEED_TOKENS} new tokens: {shown}  peak RSS {result['peak_rss_gb']:.2f} GB", flush=True)


def compare_speed(args: argparse.Namespace, base: dict, engines: list[dict]) -> None:
    rates: dict[str, dict[str, list[float]]] = {}
    rss: dict[str, float] = {}
    for round_number in range(1, args.rounds + 1):
        for engine in engines:
            spec = {**base, **engine, "task": "speed"}
            result = run_child(spec)
            for batch_size, rate in result["tokens_per_s"].items():
                rates.setdefault(label(spec), {}).setdefault(batch_size, []).append(rate)
            rss[label(spec)] = max(rss.get(label(spec), 0.0), result["peak_rss_gb"])
            shown = "  ".join(f"batch {size}: {rate:6.1f} tok/s ({result['threads'][size]} thr)"
                              for size, rate in result["tokens_per_s"].items())
            print(f"round {round_number}  {label(spec):<24} {shown}  peak RSS {result['peak_rss_gb']:.2f} GB "
                  f"(load {os.getloadavg()[0]:.1f})", flush=True)
    reference = next(iter(rates))  # hf float32 with the first wait policy and allocator
    print(f"\nmedian tokens/s over {args.rounds} rounds, ratio to {reference}:")
    baseline = rates[reference]
    for name, per_batch in rates.items():
        cells = [f"batch {size}: {statistics.median(values):6.1f} ({statistics.median(values) / statistics.median(baseline[size]):.2f}x)"
                 for size, values in per_batch.items()]
        print(f"  {name:<24} " + "  ".join(cells) + f"  peak RSS {rss[name]:.2f} GB")


def compare_turns(args: argparse.Namespace, base: dict, engines: list[dict]) -> None:
    """The CPU engines on ragged later-turn prompts, interleaved over the rounds; ratios to the first."""
    print(f"\nlater turns: {args.problems} ragged prompts (1-3 copies), T=0.7, {SPEED_TOKENS} new tokens, "
          f"calls of {args.turn_batch_size} draws:")
    rates: dict[str, list[float]] = {}
    for round_number in range(1, args.rounds + 1):
        for engine in engines:
            spec = {**base, **engine, "task": "turns"}
            result = run_child(spec)
            rates.setdefault(label(spec), []).append(result["tokens_per_s"])
            print(f"round {round_number}  {label(spec):<24} {result['tokens_per_s']:6.1f} new tok/s  "
                  f"({result['tokens']} new, {result['prompt_tokens']} prompt tokens in {result['wall_s']:.0f} s)  "
                  f"peak RSS {result['peak_rss_gb']:.2f} GB (load {os.getloadavg()[0]:.1f})", flush=True)
    reference = next(iter(rates))
    for name, values in rates.items():
        print(f"  {name:<24} median {statistics.median(values):6.1f} new tok/s "
              f"({statistics.median(values) / statistics.median(rates[reference]):.2f}x {reference})")


def compare_passes(args: argparse.Namespace, base: dict) -> None:
    print(f"\nHumanEval first {args.problems}, greedy single turn, max {args.eval_max_new_tokens} new tokens:")
    passes = {}
    # ct2 first: the faster one reports before the slow baseline.
    for engine in ([{"engine": "ct2", "compute_type": kind} for kind in args.pass_compute_types]
                   + ([{"engine": "openvino"}] if args.openvino else []) + [{"engine": "hf"}]):
        spec = {**base, **engine, "task": "passes"}
        result = run_child(spec)
        passes[label(spec)] = set(result["passed"])
        print(f"  {label(spec):<17} {len(result['passed'])}/{result['problems']} passed  "
              f"{result['tokens']} tokens in {result['wall_s']:.0f} s  peak RSS {result['peak_rss_gb']:.2f} GB",
              flush=True)
    reference = passes["hf float32"]
    for name, passed in passes.items():
        if name != "hf float32":
            print(f"  {name}: lost {len(reference - passed)} ({', '.join(sorted(reference - passed)) or '-'}), "
                  f"gained {len(passed - reference)} ({', '.join(sorted(passed - reference)) or '-'}) against hf float32")


if __name__ == "__main__":
    main()
