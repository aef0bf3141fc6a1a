"""Statistics used across sublim: intervals, bootstrap, paired and permutation tests.

Everything here is plain numpy so that results are reproducible from a seed and
checkable against hand-computed values.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

Z95 = 1.959963984540054


@dataclass(frozen=True)
class Interval:
    """A point estimate with a two-sided confidence interval."""

    value: float
    low: float
    high: float

    def as_dict(self) -> dict[str, float]:
        return {"value": self.value, "low": self.low, "high": self.high}


def wilson_interval(successes: int, n: int, z: float = Z95) -> Interval:
    """Wilson score interval for a binomial proportion (well-behaved at 0 and n)."""
    if n <= 0:
        return Interval(float("nan"), 0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return Interval(p, max(0.0, centre - half), min(1.0, centre + half))


def _t_quantile_975(df: int) -> float:
    """Two-sided 95% Student-t quantile; exact table for small df, normal beyond."""
    table = {
        1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
        9: 2.262, 10: 2.228, 11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131,
        16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093, 20: 2.086, 21: 2.080, 22: 2.074,
        23: 2.069, 24: 2.064, 25: 2.060, 26: 2.056, 27: 2.052, 28: 2.048, 29: 2.045,
        30: 2.042, 40: 2.021, 60: 2.000, 120: 1.980,
    }
    if df in table:
        return table[df]
    for bound in (40, 60, 120):
        if df < bound:
            return table[bound]
    return Z95


def mean_ci(values: Sequence[float] | np.ndarray) -> Interval:
    """Mean with a 95% Student-t interval (the unit is one value, e.g. one trained model)."""
    x = np.asarray(values, dtype=float)
    n = x.size
    if n == 0:
        return Interval(float("nan"), float("nan"), float("nan"))
    m = float(x.mean())
    if n == 1:
        return Interval(m, float("nan"), float("nan"))
    half = _t_quantile_975(n - 1) * float(x.std(ddof=1)) / math.sqrt(n)
    return Interval(m, m - half, m + half)


def bootstrap_ci(
    statistic: Callable[..., float],
    *samples: np.ndarray,
    n_resamples: int = 2000,
    seed: int = 0,
    paired: bool = False,
) -> Interval:
    """Percentile bootstrap interval of ``statistic(*samples)``.

    With ``paired=True`` all samples share one resampling of indices (same length
    required), as for two models scored on the same questions.
    """
    rng = np.random.default_rng(seed)
    arrays = [np.asarray(s, dtype=float) for s in samples]
    point = float(statistic(*arrays))
    stats = np.empty(n_resamples)
    for i in range(n_resamples):
        if paired:
            idx = rng.integers(0, arrays[0].size, arrays[0].size)
            stats[i] = statistic(*(a[idx] for a in arrays))
        else:
            stats[i] = statistic(*(a[rng.integers(0, a.size, a.size)] for a in arrays))
    finite = stats[np.isfinite(stats)]
    if finite.size == 0:
        return Interval(point, float("nan"), float("nan"))
    low, high = np.percentile(finite, [2.5, 97.5])
    return Interval(point, float(low), float(high))


def paired_permutation_test(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    n_resamples: int = 10000,
    seed: int = 0,
) -> float:
    """Two-sided sign-flip permutation test of mean(a - b) = 0 over paired units.

    Exact (all 2^n sign patterns) when n <= 16, Monte Carlo otherwise; the p-value
    counts the observed pattern, so it is never 0.
    """
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    n = d.size
    if n == 0:
        return float("nan")
    observed = abs(d.mean())
    if n <= 16:
        signs = ((np.arange(2**n)[:, None] >> np.arange(n)) & 1) * 2 - 1
        means = np.abs((signs * d).mean(axis=1))
        return float(np.mean(means >= observed - 1e-12))
    rng = np.random.default_rng(seed)
    signs = rng.choice([-1.0, 1.0], size=(n_resamples, n))
    means = np.abs((signs * d).mean(axis=1))
    return float((np.sum(means >= observed - 1e-12) + 1) / (n_resamples + 1))


def permutation_test(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    n_resamples: int = 10000,
    seed: int = 0,
) -> float:
    """Two-sided permutation test of mean(a) = mean(b) for two independent groups."""
    x = np.asarray(a, dtype=float)
    y = np.asarray(b, dtype=float)
    pooled = np.concatenate([x, y])
    observed = abs(x.mean() - y.mean())
    rng = np.random.default_rng(seed)
    count = 0
    for _ in range(n_resamples):
        perm = rng.permutation(pooled)
        if abs(perm[: x.size].mean() - perm[x.size :].mean()) >= observed - 1e-12:
            count += 1
    return float((count + 1) / (n_resamples + 1))


def wilcoxon_signed_rank(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p-value (normal approximation with tie correction)."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    d = d[d != 0]
    n = d.size
    if n == 0:
        return 1.0
    ranks = _average_ranks(np.abs(d))
    w_plus = float(ranks[d > 0].sum())
    mean = n * (n + 1) / 4
    _, counts = np.unique(np.abs(d), return_counts=True)
    var = n * (n + 1) * (2 * n + 1) / 24 - float(np.sum(counts**3 - counts)) / 48
    if var <= 0:
        return 1.0
    z = (abs(w_plus - mean) - 0.5) / math.sqrt(var)
    return float(math.erfc(max(z, 0.0) / math.sqrt(2)))


def _average_ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(x.size)
    sorted_x = x[order]
    i = 0
    while i < x.size:
        j = i
        while j + 1 < x.size and sorted_x[j + 1] == sorted_x[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks
