"""Metric functions on hand-made searches and against closed forms."""

from __future__ import annotations

import itertools
import math
import random

import numpy as np
import pytest

from mucode.metrics import (
    bon_success,
    bootstrap_ci,
    mean,
    pass_at_k,
    public_success,
    solved_within,
    submitted_turn,
)


def closed_form_pass_at_k(n: int, c: int, k: int) -> float:
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def test_pass_at_k_matches_the_binomial_closed_form_on_every_small_case():
    checked = 0
    for n in range(1, 41):
        for c, k in itertools.product(range(n + 1), range(1, n + 1)):
            assert pass_at_k(n, c, k) == pytest.approx(closed_form_pass_at_k(n, c, k), abs=1e-12)
            checked += 1
    assert checked > 10_000


def test_pass_at_k_matches_the_closed_form_on_large_random_cases():
    rng = random.Random(7)
    for _ in range(300):
        n = rng.randint(50, 400)
        c, k = rng.randint(0, n), rng.randint(1, n)
        assert pass_at_k(n, c, k) == pytest.approx(closed_form_pass_at_k(n, c, k), rel=1e-9, abs=1e-12)


def test_pass_at_k_stays_finite_where_the_binomials_overflow_a_float():
    # C(2000, 1000) is far beyond float range, a naive ratio of floats would be inf/inf.
    value = pass_at_k(2000, 3, 1000)
    assert 0.0 < value < 1.0
    assert value == pytest.approx(1 - (1000 * 999 * 998) / (2000 * 1999 * 1998), rel=1e-12)


def test_pass_at_1_is_the_fraction_correct():
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(5, 0, 5) == 0.0
    assert pass_at_k(5, 1, 5) == 1.0


@pytest.mark.parametrize("n, c, k", [(3, 4, 1), (3, -1, 1), (3, 1, 0), (3, 1, 4)])
def test_pass_at_k_rejects_impossible_counts(n, c, k):
    with pytest.raises(ValueError, match="pass_at_k needs"):
        pass_at_k(n, c, k)


def test_first_public_pass_that_fails_privately_is_a_failure_even_if_a_later_turn_passes():
    public = [True, True, True]
    private = [False, True, True]
    assert submitted_turn(public, 3) == 1
    assert [bon_success(public, private, t) for t in (1, 2, 3)] == [False, False, False]
    # The oracle view still sees the later private pass: that is pass@k, not BoN.
    assert solved_within(private, 3)
    assert not solved_within(private, 1)


def test_a_search_with_no_public_pass_is_a_failure_at_every_turn():
    public = [False, False, False]
    private = [False, False, False]
    assert submitted_turn(public, 3) is None
    assert [bon_success(public, private, t) for t in (1, 2, 3)] == [False, False, False]
    assert not public_success(public, 3)


def test_a_private_pass_without_a_public_pass_is_not_submitted():
    # Flaky public tests or a private suite that is not a superset: nothing is submitted.
    assert not bon_success([False, False], [True, True], 2)


def test_bon_at_t_counts_from_the_turn_where_the_public_tests_first_pass():
    public = [False, False, True]
    private = [False, False, True]
    assert [bon_success(public, private, t) for t in (1, 2, 3)] == [False, False, True]
    assert [public_success(public, t) for t in (1, 2, 3)] == [False, False, True]
    assert submitted_turn(public, 2) is None
    assert submitted_turn(public, 3) == 3


def test_bon_at_t_is_decided_at_the_submission_and_later_turns_do_not_undo_it():
    public = [False, True, False]
    private = [False, True, False]
    assert [bon_success(public, private, t) for t in (1, 2, 3)] == [False, True, True]


def test_turn_limits_outside_the_search_are_rejected():
    with pytest.raises(ValueError, match="turn limit t=4"):
        submitted_turn([True, True, True], 4)
    with pytest.raises(ValueError, match="turn limit t=0"):
        solved_within([True], 0)
    with pytest.raises(ValueError, match="one public and one private outcome per turn"):
        bon_success([True, True], [True], 1)


def test_mean_of_nothing_is_an_error():
    with pytest.raises(ValueError, match="no problems"):
        mean([])
    assert mean([1, 0, 0, 1]) == 0.5


def test_bootstrap_ci_brackets_the_mean_and_is_reproducible():
    values = [1.0] * 30 + [0.0] * 70
    low, high = bootstrap_ci(values, n_resamples=2000, seed=3)
    assert low < 0.3 < high
    # Normal approximation of a proportion: half-width about 1.96 * sqrt(.3*.7/100) = 0.09.
    assert 0.06 < (high - low) / 2 < 0.12
    assert bootstrap_ci(values, n_resamples=2000, seed=3) == (low, high)
    assert bootstrap_ci(values, n_resamples=2000, seed=4) != (low, high)


def test_bootstrap_ci_narrows_with_more_problems():
    rng = np.random.default_rng(0)
    small = rng.random(20)
    large = rng.random(2000)
    small_width = np.subtract(*bootstrap_ci(small)[::-1])
    large_width = np.subtract(*bootstrap_ci(large)[::-1])
    assert large_width < small_width / 5


def test_bootstrap_ci_of_a_constant_is_the_constant():
    assert bootstrap_ci([0.5, 0.5, 0.5]) == (0.5, 0.5)
    assert bootstrap_ci([1.0]) == (1.0, 1.0)


@pytest.mark.parametrize(
    "values, kwargs, message",
    [([], {}, "non-empty"), ([[1.0]], {}, "flat"), ([1.0], {"n_resamples": 0}, "n_resamples"),
     ([1.0], {"confidence": 1.0}, "confidence")],
)
def test_bootstrap_ci_rejects_bad_input(values, kwargs, message):
    with pytest.raises(ValueError, match=message):
        bootstrap_ci(values, **kwargs)
