"""The cost model of a `mucode-compare` run: tokens generated, prefilled and trained on, and the hours they take.

Every stage's compute is counted in tokens, and tokens become seconds through speeds
measured on the machine (`Speeds`; the defaults are the measurements of issue 16 on this
2-core CPU, to be replaced by the engine and training numbers measured once they land):

- generation: a draw is one sampled answer of `Shape.answer_tokens` tokens (decode), after
  prefilling its conversation: the first user message, plus (answer + feedback) per earlier turn;
- rollouts (per iteration, per distinct generator): problems × K draws at turn 1, and a
  trajectory continues while its code fails (`Shape.train_pass_rate` passes per turn);
- verifier: BT trains on 2 sequences (problem + answer) per pair, `pairs_per_problem` pairs
  for each problem with both a pass and a fail (`Shape.mixed_share` of them); BCE on every
  answer; then it scores the final answers for relabelling (a forward pass);
- SFT (per arm): every example is its whole conversation prefix + target (forward and
  backward over all of it; the loss is on the target only, the compute is not). µCode
  relabels every aggregated turn; multi-turn RFT keeps the turns of successful
  trajectories; Multi-STaR² every turn of problems with a passing answer; single-turn RFT
  the passing first turns;
- evaluation: problems × searches × N draws per turn; every search runs all T turns (the
  release), or with `evaluation.stop_at_public_pass` stops at its first public pass
  (`Shape.eval_public_pass_rate` of the live searches per turn); rules lv and pt+lv also
  score every candidate. An evaluation that reuses another's rows (an untrained arm, the base
  model's T = 1 row) costs nothing. The ablation's rules are fresh searches, but their first
  turn is the same `generate` call as the reference evaluation's (same generator, problems, N
  and seeds), which the generation memo (`mucode.generation_memo`) answers from disk: only
  its verifier scoring is paid again.

It plans, it does not measure: `run_cost(cfg, plan)` returns the tokens and hours per item
and the total against `Speeds.budget_hours`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from mucode.config import VERIFIER_POLICIES, Config

# Problems per (dataset, split); `limit` cuts them (`load_problems` takes the first `limit`).
DATASET_SIZES = {("mbpp", "train"): 374, ("mbpp", "test"): 500, ("humaneval", "test"): 164,
                 ("mbpp-plus", "test"): 378, ("humaneval-plus", "test"): 164, ("codecontests", "test"): 165,
                 ("codecontests", "train"): 1000}


@dataclass(frozen=True)
class Speeds:
    """Tokens per second on this machine (defaults: issue 16's measurements of the 0.5B model, shared CPU)."""

    generate_tok_s: float = 61.0  # CTranslate2 int8, batch 8, decode
    prefill_tok_s: float = 600.0  # prompt tokens; assumed ~10x decode (to be measured)
    train_tok_s: float = 24.0  # LoRA SFT, batch 4 x 512 tokens in ~84 s (forward + backward)
    verifier_train_tok_s: float = 24.0  # the same network with a score head
    score_tok_s: float = 150.0  # verifier forward only; assumed (to be measured)
    budget_hours: float = 5.0


@dataclass(frozen=True)
class Shape:
    """What a run's conversations look like, in tokens and rates (assumptions until measured)."""

    prompt_tokens: int = 220  # the first user message (problem + public tests, chat template)
    answer_tokens: int = 120  # mean generated tokens per draw (capped by max_new_tokens)
    feedback_tokens: int = 120  # a feedback message (traceback or success line)
    train_pass_rate: float = 0.4  # share of rollout turns whose code passes (a trajectory stops at a pass)
    mixed_share: float = 0.5  # share of training problems with both a passing and a failing answer (BT pairs)
    eval_public_pass_rate: float = 0.5  # share of live searches whose selected code passes publicly, per turn


def problem_count(dataset: str, split: str, limit: int | None) -> int:
    size = DATASET_SIZES.get((dataset, split))
    if size is None:
        if limit is None:
            raise ValueError(f"no known size for {dataset}/{split}: set a limit or add it to DATASET_SIZES")
        return limit
    return min(size, limit) if limit else size


def turn_prompt_tokens(shape: Shape, turn: int) -> int:
    """Tokens before the answer of `turn` (1-based): the first message and every earlier answer + feedback."""
    return shape.prompt_tokens + (turn - 1) * (shape.answer_tokens + shape.feedback_tokens)


def answer_tokens(shape: Shape, max_new_tokens: int) -> int:
    return min(shape.answer_tokens, max_new_tokens)


def _seconds(generated: float, prefilled: float, trained: float, verifier_trained: float, scored: float,
             speeds: Speeds) -> float:
    return (generated / speeds.generate_tok_s + prefilled / speeds.prefill_tok_s + trained / speeds.train_tok_s
            + verifier_trained / speeds.verifier_train_tok_s + scored / speeds.score_tok_s)


def _item(name: str, speeds: Speeds, *, draws: float = 0, generated: float = 0, prefilled: float = 0,
          trained: float = 0, verifier_trained: float = 0, scored: float = 0) -> dict[str, Any]:
    seconds = _seconds(generated, prefilled, trained, verifier_trained, scored, speeds)
    return {"item": name, "draws": round(draws), "generated_tokens": round(generated),
            "prefill_tokens": round(prefilled), "train_tokens": round(trained + verifier_trained),
            "score_tokens": round(scored), "hours": round(seconds / 3600, 3)}


def rollout_turns(cfg: Config, shape: Shape) -> list[float]:
    """Expected trajectories alive at each turn, per rollout (a trajectory stops once it passes)."""
    return [(1 - shape.train_pass_rate) ** (turn - 1) for turn in range(1, cfg.rollout.max_turns + 1)]


def training_costs(cfg: Config, shape: Shape, speeds: Speeds, arms: list[str]) -> list[dict[str, Any]]:
    """Rollouts, verifier and SFT of every iteration of every arm (iteration 1's rollouts and verifier once)."""
    problems = problem_count(cfg.data.train_dataset, cfg.data.train_split, cfg.data.train_limit)
    answer = answer_tokens(shape, cfg.rollout.sampling.max_new_tokens)
    alive = rollout_turns(cfg, shape)
    rollouts = problems * cfg.rollout.num_rollouts
    draws = rollouts * sum(alive)
    prefill = rollouts * sum(share * turn_prompt_tokens(shape, turn) for turn, share in enumerate(alive, 1))
    # An SFT example is its prefix and its target, so its length is the prefix before that turn + an answer.
    example_tokens = prefill / draws + answer
    answer_sequence = shape.prompt_tokens + answer  # the verifier reads the problem and one answer
    verifier = cfg.verifier
    if verifier.loss == "bt":
        verifier_tokens = problems * shape.mixed_share * verifier.pairs_per_problem * 2 * answer_sequence
    else:
        verifier_tokens = draws * answer_sequence
    solved = 1 - (1 - shape.train_pass_rate) ** cfg.rollout.max_turns  # a rollout that ends passing
    examples_per_iteration = {
        "mucode": draws, "mucode-r": draws * (1 + solved), "oracle": draws * solved, "mucode-solved": draws * solved,
        "rft": draws * solved * (sum(alive) / len(alive)),  # successful trajectories are the shorter ones
        "single-turn-rft": rollouts * shape.train_pass_rate,
    }
    items = []
    for iteration in range(1, cfg.iterations + 1):
        # Iteration 1 starts every arm from the base model: its rollouts and verifier are shared.
        generators = 1 if iteration == 1 else len(arms)
        items.append(_item(f"rollout, iteration {iteration} ({generators} generator(s))", speeds,
                           draws=generators * draws, generated=generators * draws * answer,
                           prefilled=generators * prefill))
        # BT draws a fixed number of pairs per problem; BCE reads every aggregated answer.
        grown = verifier_tokens * (iteration if verifier.loss == "bce" else 1)
        scoring_arms = sum(1 for arm in arms if arm in VERIFIER_POLICIES)  # relabel scores the final answers
        items.append(_item(f"verifier ({verifier.loss}), iteration {iteration} ({generators} verifier(s))", speeds,
                           verifier_trained=generators * verifier.epochs * grown,
                           scored=scoring_arms * rollouts * iteration * answer_sequence))
        for arm in arms:
            examples = examples_per_iteration[arm] * iteration  # the aggregate grows by one iteration's rollouts
            items.append(_item(f"finetune {arm}, iteration {iteration} ({examples:.0f} examples)", speeds,
                               trained=cfg.finetune.epochs * examples * example_tokens))
    return items


def evaluation_cost(cfg: Config, shape: Shape, speeds: Speeds, name: str, problems: int, n: int, turns: int,
                    uses_verifier: bool, first_turn_memoized: bool = False) -> dict[str, Any]:
    """One search of `problems` problems, N draws per live search and turn: every search runs
    all `turns` turns, or, with `evaluation.stop_at_public_pass`, until its first public pass.
    `first_turn_memoized`: an identical first turn was generated before (only scored again)."""
    answer = answer_tokens(shape, cfg.evaluation.sampling.max_new_tokens)
    searches = problems * cfg.evaluation.searches
    stay = 1 - shape.eval_public_pass_rate if cfg.evaluation.stop_at_public_pass else 1.0
    alive = [stay ** (turn - 1) for turn in range(1, turns + 1)]
    all_draws = searches * n * sum(alive)
    generated_turns = list(enumerate(alive, 1))[1 if first_turn_memoized else 0:]
    draws = searches * n * sum(share for _, share in generated_turns)
    prefill = searches * n * sum(share * turn_prompt_tokens(shape, turn) for turn, share in generated_turns)
    scored = all_draws * (shape.prompt_tokens + answer) if uses_verifier else 0
    return _item(name, speeds, draws=draws, generated=draws * answer, prefilled=prefill, scored=scored)


def run_cost(cfg: Config, plan: list[Any], speeds: Speeds | None = None, shape: Shape | None = None) -> dict[str, Any]:
    """Tokens and hours of every training step and every planned evaluation; evaluations that
    reuse another's rows (`reuses`) cost nothing. `plan`: `mucode.flows.compare.PlannedEvaluation`s."""
    speeds, shape = speeds or Speeds(), shape or Shape()
    items = training_costs(cfg, shape, speeds, list(cfg.compare.arms))
    first_turns: set[tuple[str, int, str]] = set()  # (method, N, dataset) whose first turn is in the memo
    for item in plan:
        for dataset in cfg.data.eval_datasets:
            if item.datasets is not None and dataset not in item.datasets:
                continue
            problems = problem_count(dataset, cfg.data.eval_split, cfg.data.eval_limit)
            turns = item.turns or cfg.evaluation.turns
            name = f"evaluate {item.method} N={item.n} T={turns} {item.selection} on {dataset} ({problems})"
            if getattr(item, "reuses", ""):
                items.append({**_item(name, speeds), "reuses": item.reuses})
                continue
            memoized = (item.method, item.n, dataset) in first_turns
            first_turns.add((item.method, item.n, dataset))
            items.append({**evaluation_cost(cfg, shape, speeds, name, problems, item.n, turns, item.uses_verifier,
                                            first_turn_memoized=memoized),
                          **({"first_turn": "memoized"} if memoized else {})})
    hours = sum(item["hours"] for item in items)
    training_hours = sum(item["hours"] for item in items if not item["item"].startswith("evaluate"))
    return {"speeds": asdict(speeds), "shape": asdict(shape), "items": items,
            "total_hours": round(hours, 2), "training_hours": round(training_hours, 2),
            "evaluation_hours": round(hours - training_hours, 2),
            "within_budget": hours <= speeds.budget_hours}
