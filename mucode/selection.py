"""Which of N candidates a search keeps: the selection rules of multi-turn Best-of-N.

- `select_candidate`: one of N candidates by a rule: `random`, `pt` (public tests), `lv`
  (learned verifier), `pt+lv` (public tests decide, the verifier ranks within).
- `search_rng`: the RNG of one search's draws (`random`, and `pt` tie-breaks), seeded by
  (seed, task, search), so selections do not depend on batching.
- `replay_selection`: advance that RNG as a finished turn did (resuming a search).

`EvaluationError` is the one-line error of the evaluation modules (this one is the lowest of
them). This module does not generate, execute or score candidates.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

SELECTION_RULES: tuple[str, ...] = ("random", "lv", "pt", "pt+lv")
VERIFIER_RULES: tuple[str, ...] = ("lv", "pt+lv")
# pt+lv ranks by 100 * public pass + verifier score: the public tests decide, the verifier
# ranks within the passing (or within the failing) candidates.
PUBLIC_PASS_WEIGHT = 100.0


class EvaluationError(ValueError):
    """An evaluation was asked for with unusable settings; the message is one line."""


def selection_score(rule: str, public_passed: bool, verifier_score: float) -> float:
    """The number a deterministic rule maximises (`lv`, `pt+lv`)."""
    if rule == "lv":
        return verifier_score
    if rule == "pt+lv":
        return PUBLIC_PASS_WEIGHT * float(public_passed) + verifier_score
    raise EvaluationError(f"selection {rule!r} has no score: use lv or pt+lv")


def select_candidate(
    rule: str,
    public_passed: Sequence[bool],
    verifier_scores: Sequence[float] | None,
    rng: random.Random,
) -> int:
    """Index of the chosen candidate among N, by selection rule.

    random: uniform. pt: uniform among the public-passing ones (all if none pass).
    lv / pt+lv: the highest score, the first of equals.
    """
    check_selection(rule, has_verifier=verifier_scores is not None)
    if not public_passed:
        raise EvaluationError("select_candidate needs at least one candidate")
    count = len(public_passed)
    if rule == "random":
        return rng.randrange(count)
    if rule == "pt":
        passing = [index for index, passed in enumerate(public_passed) if passed]
        return rng.choice(passing or list(range(count)))
    assert verifier_scores is not None
    if len(verifier_scores) != count:
        raise EvaluationError(f"{len(verifier_scores)} verifier scores for {count} candidates")
    scores = [selection_score(rule, passed, score) for passed, score in zip(public_passed, verifier_scores)]
    return max(range(count), key=lambda index: (scores[index], -index))


def check_selection(rule: str, *, has_verifier: bool) -> None:
    if rule not in SELECTION_RULES:
        raise EvaluationError(f"unknown selection {rule!r}: use one of {', '.join(SELECTION_RULES)}")
    if rule in VERIFIER_RULES and not has_verifier:
        raise EvaluationError(f"selection {rule} needs --verifier; use pt for a base model")


def search_rng(seed: int, task_id: str, search_id: int) -> random.Random:
    """The selection RNG of one search: independent of batch order and of other problems."""
    return random.Random(f"{seed}/{task_id}/{search_id}")


def replay_selection(rule: str, n: int, public_count: int, rng: random.Random) -> None:
    """Advance a search's RNG as `select_candidate` did on a finished turn.

    Its draws depend only on N and the number of public-passing candidates, so a resumed
    search continues with the same random stream as an uninterrupted one.
    """
    public = [True] * public_count + [False] * (n - public_count)
    select_candidate(rule, public, [0.0] * n if rule in VERIFIER_RULES else None, rng)
