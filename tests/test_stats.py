"""Statistics against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sublim.evaluate.stats import (
    bootstrap_ci,
    mean_ci,
    paired_permutation_test,
    permutation_test,
    wilcoxon_signed_rank,
    wilson_interval,
)


def test_wilson_by_hand():
    iv = wilson_interval(5, 10)
    assert iv.value == 0.5
    assert iv.low == pytest.approx(0.2366, abs=1e-4)
    assert iv.high == pytest.approx(0.7634, abs=1e-4)
    zero = wilson_interval(0, 20)
    assert zero.low == 0.0 and zero.high == pytest.approx(0.1611, abs=1e-4)
    full = wilson_interval(20, 20)
    assert full.high == 1.0 and full.low == pytest.approx(0.8389, abs=1e-4)
    assert math.isnan(wilson_interval(0, 0).value)


def test_mean_ci_by_hand():
    iv = mean_ci([1.0, 2.0, 3.0])
    half = 4.303 * 1.0 / math.sqrt(3)
    assert iv.value == 2.0
    assert iv.low == pytest.approx(2 - half) and iv.high == pytest.approx(2 + half)
    one = mean_ci([4.0])
    assert one.value == 4.0 and math.isnan(one.low)


def test_paired_permutation_exact():
    # d = (1, 2, 3): of the 8 sign patterns only all-plus and all-minus reach |mean| = 2
    assert paired_permutation_test([2, 3, 4], [1, 1, 1]) == pytest.approx(2 / 8)
    # d = (1, 1, 1, 1, 1): 2 of 32 patterns
    assert paired_permutation_test([1] * 5, [0] * 5) == pytest.approx(2 / 32)
    assert paired_permutation_test([1, 2], [1, 2]) == 1.0


def test_paired_permutation_monte_carlo_detects_shift():
    rng = np.random.default_rng(0)
    b = rng.normal(size=40)
    assert paired_permutation_test(b + 1.0, b) < 0.001
    assert paired_permutation_test(b + rng.normal(scale=1.0, size=40), b) > 0.01


def test_permutation_test_two_groups():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=30), rng.normal(size=30) + 2
    assert permutation_test(a, b, n_resamples=2000) < 0.001
    assert permutation_test(a, rng.normal(size=30), n_resamples=2000) > 0.01


def test_wilcoxon_by_hand():
    # d = 1..8, all positive: W+ = 36, mean 18, var 8*9*17/24 = 51, z = (18 - 0.5)/sqrt(51)
    p = wilcoxon_signed_rank(np.arange(1, 9), np.zeros(8))
    z = 17.5 / math.sqrt(51)
    assert p == pytest.approx(math.erfc(z / math.sqrt(2)))
    assert wilcoxon_signed_rank([1, 2], [1, 2]) == 1.0


def test_bootstrap_ci_covers_and_pairs():
    rng = np.random.default_rng(2)
    x = rng.normal(loc=3, size=200)
    iv = bootstrap_ci(np.mean, x, n_resamples=500)
    assert iv.low < 3 < iv.high and iv.high - iv.low < 0.6
    a = rng.normal(size=100)
    paired = bootstrap_ci(lambda u, v: float(np.mean(u - v)), a + 0.5, a, paired=True, n_resamples=300)
    assert paired.low == pytest.approx(0.5) and paired.high == pytest.approx(0.5)
