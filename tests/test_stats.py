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
    t_quantile_975,
    wilcoxon_signed_rank,
    wilcoxon_test,
    wilson_interval,
)


def _signed_rank_p_by_enumeration(d: np.ndarray) -> float:
    """The oracle: two-sided Wilcoxon p by listing every sign pattern of the (average) ranks."""
    from scipy.stats import rankdata

    d = d[d != 0]
    ranks = rankdata(np.abs(d))
    observed = abs(ranks[d > 0].sum() - ranks.sum() / 2)
    n = d.size
    signs = (np.arange(2 ** n)[:, None] >> np.arange(n)) & 1
    w = (signs * ranks).sum(1)
    return float(np.mean(np.abs(w - ranks.sum() / 2) >= observed - 1e-9))


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
    assert iv.low == pytest.approx(2 - half, abs=1e-3) and iv.high == pytest.approx(2 + half, abs=1e-3)
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


def test_wilcoxon_is_exact():
    # d = 1..8, all positive: W+ = 36 is the largest of 2^8 equally likely sums, so p = 2/256 exactly
    # (the normal approximation used before said 0.012)
    assert wilcoxon_signed_rank(np.arange(1, 9), np.zeros(8)) == pytest.approx(2 / 256)
    assert wilcoxon_test(np.arange(1, 51), np.zeros(50)) == (pytest.approx(2 / 2 ** 50), "exact")
    assert wilcoxon_signed_rank([1, 2], [1, 2]) == 1.0
    rng = np.random.default_rng(5)
    for _ in range(5):
        d = np.round(rng.normal(0.3, 1, size=11), 1)  # rounding makes ties (and zeros)
        p, how = wilcoxon_test(d, np.zeros_like(d))
        assert p == pytest.approx(_signed_rank_p_by_enumeration(d), abs=1e-9)
        assert how in ("exact", "exact permutation (ties)")


def test_t_quantiles_are_exact_between_table_rows():
    # the hand table jumped from df 30 to 40, 60 and 120: df 35 got 2.021 (too narrow); the exact value
    assert t_quantile_975(2) == pytest.approx(4.303, abs=1e-3)
    assert t_quantile_975(35) == pytest.approx(2.0301, abs=1e-4)
    assert t_quantile_975(100) == pytest.approx(1.9840, abs=1e-4)


def test_bootstrap_ci_covers_and_pairs():
    rng = np.random.default_rng(2)
    x = rng.normal(loc=3, size=200)
    iv = bootstrap_ci(np.mean, x, n_resamples=500)
    assert iv.low < 3 < iv.high and iv.high - iv.low < 0.6
    a = rng.normal(size=100)
    paired = bootstrap_ci(lambda u, v: float(np.mean(u - v)), a + 0.5, a, paired=True, n_resamples=300)
    assert paired.low == pytest.approx(0.5) and paired.high == pytest.approx(0.5)


def test_bca_corrects_a_skewed_statistic():
    """For a skewed sample the BCa interval is shifted against the percentile interval's bias; its coverage of
    the true mean of an exponential (1.0) over repeated draws is near 95%."""
    rng = np.random.default_rng(3)
    covered = 0
    for _ in range(60):
        x = rng.exponential(size=30)
        iv = bootstrap_ci(np.mean, x, n_resamples=999, seed=int(rng.integers(1 << 30)))
        covered += iv.low <= 1.0 <= iv.high
    assert 0.85 <= covered / 60 <= 1.0
    with np.errstate(divide="ignore"):
        inf = bootstrap_ci(lambda u, v: float(np.mean(u) / np.mean(v)), np.ones(5), np.zeros(5), paired=True)
    assert math.isinf(inf.value) and math.isnan(inf.low)
