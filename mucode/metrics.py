"""The evaluation metrics of µCode as pure functions over booleans and numbers.

- `pass_at_k`: the unbiased estimator 1 - C(n-c, k) / C(n, k) for one problem.
- `submitted_turn`, `bon_success`: multi-turn Best-of-N scoring of one search: the submitted
  answer is the first turn (<= t) whose selected code passes the public tests; the search
  succeeds only if that answer also passes the private tests.
- `solved_within`, `public_success`: any turn <= t passes the private (oracle) or the public
  tests.
- `bootstrap_ci`: a percentile bootstrap interval of a mean over problems.

A search is given as its per-turn outcomes, turn 1 first. This module does not read frames,
run code or choose candidates (that is `mucode.search`, `mucode.selection`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples drawn without replacement from n is correct,
    given that c of the n are correct."""
    if not 0 <= c <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 1 <= k <= n, got n={n}, k={k}: use fewer k or more samples")
    if n - c < k:
        return 1.0
    # C(n-c, k) / C(n, k) as a product of k ratios, so large n never overflows or loses
    # precision the way a ratio of two huge binomials would.
    failure = float(np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))
    return 1.0 - failure


def _check_within(turns: Sequence[bool], within: int) -> None:
    if not 1 <= within <= len(turns):
        raise ValueError(f"turn limit t={within} must be between 1 and the {len(turns)} turns of the search")


def submitted_turn(public_passed: Sequence[bool], within: int) -> int | None:
    """The 1-based turn whose code is submitted within `within` turns: the first public pass,
    or None when no turn up to `within` passes the public tests."""
    _check_within(public_passed, within)
    for turn, passed in enumerate(public_passed[:within], start=1):
        if passed:
            return turn
    return None


def bon_success(public_passed: Sequence[bool], private_passed: Sequence[bool], within: int) -> bool:
    """BoN@t of one search: its submitted answer (first public pass) also passes privately."""
    if len(public_passed) != len(private_passed):
        raise ValueError(
            f"a search needs one public and one private outcome per turn, got "
            f"{len(public_passed)} public and {len(private_passed)} private"
        )
    turn = submitted_turn(public_passed, within)
    return turn is not None and bool(private_passed[turn - 1])


def solved_within(private_passed: Sequence[bool], within: int) -> bool:
    """Any turn up to `within` passes the private tests (the oracle view of a search)."""
    _check_within(private_passed, within)
    return any(private_passed[:within])


def public_success(public_passed: Sequence[bool], within: int) -> bool:
    """Any turn up to `within` passes the public tests (what the model itself can see)."""
    return submitted_turn(public_passed, within) is not None


def mean(values: Sequence[float]) -> float:
    if len(values) == 0:
        raise ValueError("mean of no values: the evaluation has no problems")
    return float(np.mean(np.asarray(values, dtype=float)))


def bootstrap_ci(
    per_problem_values: Sequence[float],
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean, resampling problems with replacement."""
    values = np.asarray(per_problem_values, dtype=float)
    if values.ndim != 1 or values.size == 0:
        raise ValueError("bootstrap_ci needs a non-empty flat list of per-problem values")
    if n_resamples < 1:
        raise ValueError(f"bootstrap_ci needs n_resamples >= 1, got {n_resamples}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"bootstrap_ci needs 0 < confidence < 1, got {confidence}")
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, values.size, size=(n_resamples, values.size))
    means = values[picks].mean(axis=1)
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(means, [tail, 100.0 - tail])
    return float(low), float(high)
