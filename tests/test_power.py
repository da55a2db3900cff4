"""mucode.power: exact McNemar thresholds, the bootstrap threshold against a real bootstrap, detectable differences."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from mucode import metrics
from mucode.power import (
    bootstrap_resolvable_difference, detectable_difference, discordance, mcnemar_p_value, min_resolvable_difference,
    power_table, sampling_discordance)


def test_mcnemar_p_value_is_the_exact_binomial_tail():
    assert mcnemar_p_value(9, 1) == pytest.approx(2 * 11 / 1024)  # P(X >= 9) for X ~ Bin(10, 1/2), doubled
    assert mcnemar_p_value(1, 9) == mcnemar_p_value(9, 1)
    assert mcnemar_p_value(5, 5) == 1.0 and mcnemar_p_value(0, 0) == 1.0
    with pytest.raises(ValueError, match="negative"):
        mcnemar_p_value(-1, 3)


def test_min_resolvable_difference_is_the_first_significant_split():
    # 10 discordant of 100: 9-1 is significant (p 0.021), 8-2 is not (p 0.109): (9 - 1) / 100.
    assert min_resolvable_difference(100, 0.1) == pytest.approx(0.08)
    # 16 discordant of 164: 13-3 (p 0.021) but not 12-4 (p 0.077).
    assert min_resolvable_difference(164, 0.1) == pytest.approx(10 / 164)
    assert math.isinf(min_resolvable_difference(10, 0.4))  # 4 discordant: even 4-0 has p 0.125
    # More problems at the same discordance resolve smaller differences.
    assert min_resolvable_difference(500, 0.2) < min_resolvable_difference(164, 0.2)


def test_bootstrap_threshold_is_where_a_paired_bootstrap_interval_leaves_zero():
    problems, share = 300, 0.2
    threshold = bootstrap_resolvable_difference(problems, share)
    discordant = round(problems * share)

    def interval_low(wins: int) -> float:
        differences = np.array([1.0] * wins + [-1.0] * (discordant - wins) + [0.0] * (problems - discordant))
        return metrics.bootstrap_ci(differences, n_resamples=4000, seed=1)[0]

    wins_at_threshold = (discordant + threshold * problems) / 2
    assert interval_low(math.ceil(wins_at_threshold) + 2) > 0  # a little above: resolved
    assert interval_low(math.floor(wins_at_threshold) - 2) <= 0  # a little below: not


def test_detectable_difference_needs_more_than_resolvable_and_shrinks_with_problems():
    assert detectable_difference(164, 0.2) > bootstrap_resolvable_difference(164, 0.2)
    assert detectable_difference(500, 0.2) < detectable_difference(164, 0.2)
    with pytest.raises(ValueError, match="discordance"):
        detectable_difference(164, 1.5)


def test_discordance_from_outcomes_and_the_plan_table():
    assert discordance({"a": True, "b": False, "c": True}, {"a": True, "b": True, "c": False, "d": True}) == (3, 2 / 3)
    rows = power_table({"humaneval": 164, "mbpp": 300}, [0.1, 0.4])
    assert [(row["dataset"], row["discordance"]) for row in rows] == [
        ("humaneval", 0.1), ("humaneval", 0.4), ("mbpp", 0.1), ("mbpp", 0.4)]
    assert rows[0]["mcnemar_resolvable_points"] == round(100 * 10 / 164, 1)


def test_sampling_discordance_is_the_mean_unbiased_2p1p_over_problems_with_two_runs():
    runs = {"half": [True, False, True, False], "always": [True, True, True], "once": [True]}
    # half: 2*2*2/(4*3) = 2/3; always: 0; once: skipped (one run says nothing of its spread).
    assert sampling_discordance(runs) == (2, (2 / 3 + 0) / 2)
    # Unbiased: over many problems with p = 0.3 and k = 4 runs it approaches 2p(1-p) = 0.42,
    # where the plug-in estimate 2p̂(1-p̂) would approach 0.42 * 3/4.
    rng = random.Random(0)
    simulated = {str(i): [rng.random() < 0.3 for _ in range(4)] for i in range(20000)}
    assert abs(sampling_discordance(simulated)[1] - 0.42) < 0.01
    with pytest.raises(ValueError, match="two runs"):
        sampling_discordance({"a": [True], "b": []})
