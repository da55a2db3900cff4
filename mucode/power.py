"""Statistical power of a paired comparison of two methods on the same problems.

Two methods evaluated on the same n problems differ only on the *discordant* problems (one
solves it, the other does not). With m discordant problems, b won by the first method and
c = m - b by the second, the paired difference is (b - c) / n, and whether it is told from
noise depends on m alone:

- `mcnemar_p_value(b, c)`: exact two-sided McNemar test (a binomial test of b among m at 1/2).
- `min_resolvable_difference(n, discordance)`: the smallest |b - c| / n whose exact McNemar
  p-value is at most 1 - confidence, given m = round(n · discordance) discordant problems
  (infinity when even b = m does not reach it). An observed difference this large is
  significant; a smaller one is not, whatever its sign.
- `bootstrap_resolvable_difference(n, discordance)`: the same threshold for a paired
  percentile-bootstrap (normal-approximation) interval: Δ = z·sqrt((d − Δ²) / n), solved
  for Δ, i.e. z·sqrt(d / (n + z²)).
- `detectable_difference(n, discordance, power)`: the true difference the test finds with
  probability `power` (normal approximation): (z_α + z_β)·sqrt(d / (n + (z_α + z_β)²)).
- `discordance(a, b)`: the share of discordant problems from per-problem outcomes.
- `sampling_discordance(runs)`: the share two independent runs of *one* model are expected to
  disagree on, from several runs per problem: the mean over problems of 2p(1 - p), each
  estimated without bias as 2c(k - c) / (k(k - 1)) from c successes in k runs. Measured on
  the base model's rollouts it is the floor of the discordance between two methods that
  start from it (sampling noise alone), so it sizes a comparison before it runs.

Pure functions over counts; this module reads no artifact (`mucode.compare` applies it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from statistics import NormalDist


def _check(problems: int, discordance: float, confidence: float) -> None:
    if problems < 1:
        raise ValueError(f"power needs at least one problem, got {problems}")
    if not 0.0 <= discordance <= 1.0:
        raise ValueError(f"discordance is a share of problems in [0, 1], got {discordance}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")


def mcnemar_p_value(only_first: int, only_second: int) -> float:
    """Exact two-sided McNemar p-value: P(|B - m/2| >= |b - m/2|) for B ~ Binomial(m, 1/2)."""
    if only_first < 0 or only_second < 0:
        raise ValueError(f"discordant counts cannot be negative, got {only_first} and {only_second}")
    m = only_first + only_second
    if m == 0:
        return 1.0
    extreme = max(only_first, only_second)
    tail = sum(math.comb(m, k) for k in range(extreme, m + 1)) / 2 ** m
    return min(1.0, 2.0 * tail)


def min_resolvable_difference(problems: int, discordance: float, confidence: float = 0.95) -> float:
    """Smallest |paired difference| (share of problems) the exact McNemar test calls significant."""
    _check(problems, discordance, confidence)
    m = round(problems * discordance)
    for wins in range((m + 1) // 2, m + 1):  # b >= c, from the most balanced split up
        if mcnemar_p_value(wins, m - wins) <= 1.0 - confidence:
            return (2 * wins - m) / problems
    return math.inf


def bootstrap_resolvable_difference(problems: int, discordance: float, confidence: float = 0.95) -> float:
    """Smallest observed paired difference whose normal-approximation interval excludes zero."""
    _check(problems, discordance, confidence)
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    return z * math.sqrt(discordance / (problems + z * z))


def detectable_difference(problems: int, discordance: float, power: float = 0.8, confidence: float = 0.95) -> float:
    """The true paired difference found significant with probability `power` (normal approximation)."""
    _check(problems, discordance, confidence)
    if not 0.0 < power < 1.0:
        raise ValueError(f"power must lie in (0, 1), got {power}")
    z = NormalDist().inv_cdf(0.5 + confidence / 2) + NormalDist().inv_cdf(power)
    return z * math.sqrt(discordance / (problems + z * z))


def discordance(first: Mapping[str, bool], second: Mapping[str, bool]) -> tuple[int, float]:
    """(shared problems, share of them solved by exactly one method) from per-problem outcomes."""
    common = set(first) & set(second)
    if not common:
        raise ValueError("the two methods share no problem: evaluate both on the same problems")
    return len(common), sum(1 for task in common if bool(first[task]) != bool(second[task])) / len(common)


def sampling_discordance(runs: Mapping[str, Sequence[bool]]) -> tuple[int, float]:
    """(problems with at least two runs, expected discordance of two independent runs) from per-problem outcomes."""
    estimates = []
    for outcomes in runs.values():
        k, c = len(outcomes), sum(1 for passed in outcomes if passed)
        if k >= 2:
            estimates.append(2 * c * (k - c) / (k * (k - 1)))
    if not estimates:
        raise ValueError("sampling discordance needs at least two runs of some problem")
    return len(estimates), sum(estimates) / len(estimates)


def power_table(problem_counts: Mapping[str, int], discordances: list[float],
                confidence: float = 0.95) -> list[dict[str, object]]:
    """For each dataset size and discordance: the resolvable and 80%-detectable differences, in points."""
    rows = []
    for dataset, problems in problem_counts.items():
        for share in discordances:
            exact = min_resolvable_difference(problems, share, confidence)
            rows.append({"dataset": dataset, "problems": problems, "discordance": share,
                         "mcnemar_resolvable_points": None if math.isinf(exact) else round(100 * exact, 1),
                         "bootstrap_resolvable_points": round(100 * bootstrap_resolvable_difference(
                             problems, share, confidence), 1),
                         "detectable_80pct_power_points": round(100 * detectable_difference(
                             problems, share, 0.8, confidence), 1)})
    return rows
