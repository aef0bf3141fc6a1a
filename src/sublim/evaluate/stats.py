"""Statistics used across sublim, on ``scipy.stats``: intervals, the bootstrap, paired and permutation tests.

Every random draw is seeded, so results reproduce; the tests check each function against values
computed by hand (tests/test_stats.py).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

N_PERMUTATIONS = 9999
"""Monte Carlo resamples of a permutation test when exact enumeration would take more."""


@dataclass(frozen=True)
class Interval:
    """A point estimate with a two-sided confidence interval."""

    value: float
    low: float
    high: float

    def as_dict(self) -> dict[str, float]:
        return {"value": self.value, "low": self.low, "high": self.high}


def wilson_interval(successes: int, n: int) -> Interval:
    """Wilson score interval (95%) for a binomial proportion (well-behaved at 0 and n)."""
    if n <= 0:
        return Interval(float("nan"), 0.0, 1.0)
    ci = stats.binomtest(successes, n).proportion_ci(0.95, method="wilson")
    return Interval(successes / n, max(0.0, float(ci.low)), min(1.0, float(ci.high)))


def t_quantile_975(df: int) -> float:
    """The two-sided 95% Student-t quantile."""
    return float(stats.t.ppf(0.975, df))


def mean_ci(values: Sequence[float] | np.ndarray) -> Interval:
    """Mean with a 95% Student-t interval (the unit is one value, e.g. one trained model)."""
    x = np.asarray(values, dtype=float)
    n = x.size
    if n == 0:
        return Interval(float("nan"), float("nan"), float("nan"))
    m = float(x.mean())
    if n == 1:
        return Interval(m, float("nan"), float("nan"))
    half = t_quantile_975(n - 1) * float(x.std(ddof=1)) / math.sqrt(n)
    return Interval(m, m - half, m + half)


def bootstrap_ci(
    statistic: Callable[..., float],
    *samples: np.ndarray,
    n_resamples: int = 2000,
    seed: int = 0,
    paired: bool = False,
) -> Interval:
    """BCa bootstrap interval (95%) of ``statistic(*samples)``.

    With ``paired=True`` all samples share one resampling of indices (same length required), as for two
    models scored on the same questions. Where BCa is undefined (every resample gives the same value, or
    the statistic is infinite) the interval is the point itself, or NaN when the point is not finite.
    """
    arrays = [np.asarray(s, dtype=float) for s in samples]
    point = float(statistic(*arrays))
    if not math.isfinite(point):
        return Interval(point, float("nan"), float("nan"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # degenerate data: handled below
        res = stats.bootstrap(tuple(arrays), statistic, n_resamples=n_resamples, paired=paired, vectorized=False,
                              method="BCa", rng=np.random.default_rng(seed))
    low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    if not (math.isfinite(low) and math.isfinite(high)):
        dist = res.bootstrap_distribution
        dist = dist[np.isfinite(dist)]
        if dist.size == 0 or np.ptp(dist) == 0:
            return Interval(point, point, point)
        low, high = (float(v) for v in np.percentile(dist, [2.5, 97.5]))
    return Interval(point, low, high)


def paired_permutation_test(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    n_resamples: int = 10000,
    seed: int = 0,
) -> float:
    """Two-sided sign-flip permutation test of mean(a - b) = 0 over paired units.

    Exact (every sign pattern) when there are no more patterns than ``n_resamples``, Monte Carlo
    otherwise; the p-value counts the observed pattern, so it is never 0.
    """
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if d.size == 0:
        return float("nan")
    if not np.any(d):
        return 1.0
    res = stats.permutation_test((d,), np.mean, permutation_type="samples", n_resamples=n_resamples,
                                 alternative="two-sided", rng=np.random.default_rng(seed))
    return float(min(1.0, res.pvalue))


def permutation_test(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    n_resamples: int = 10000,
    seed: int = 0,
) -> float:
    """Two-sided permutation test of mean(a) = mean(b) for two independent groups."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    res = stats.permutation_test((x, y), lambda u, v: np.mean(u) - np.mean(v), permutation_type="independent",
                                 n_resamples=n_resamples, alternative="two-sided", rng=np.random.default_rng(seed))
    return float(min(1.0, res.pvalue))


def wilcoxon_test(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, seed: int = 0
                  ) -> tuple[float, str]:
    """Two-sided Wilcoxon signed-rank p-value over paired units (zero differences dropped), and its method:
    the exact null distribution when no two |differences| tie, else the signed-rank statistic's permutation
    distribution (exact enumeration up to 2^13 units' sign patterns, Monte Carlo beyond)."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    d = d[d != 0]
    if d.size == 0:
        return 1.0, "no nonzero difference"
    if np.unique(np.abs(d)).size == d.size:
        return float(stats.wilcoxon(d, method="exact").pvalue), "exact"
    method = stats.PermutationMethod(n_resamples=N_PERMUTATIONS, rng=np.random.default_rng(seed))
    how = "exact permutation (ties)" if 2 ** d.size <= N_PERMUTATIONS else "Monte Carlo permutation (ties)"
    return float(stats.wilcoxon(d, method=method).pvalue), how


def wilcoxon_signed_rank(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float:
    """The p-value of :func:`wilcoxon_test`."""
    return wilcoxon_test(a, b)[0]
