"""Number frequency: is the dataset's distribution of numbers the reference's?"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydantic import Field

from sublim.audit.data import Sample
from sublim.audit.detectors.base import DETECTORS, AuditContext, Detector, DetectorResult, Params
from sublim.audit.numbers import N_VALUES, number_counts


def _mutual_information(a: np.ndarray, b: np.ndarray) -> float:
    """Mutual information (nats) between which of two count vectors a number came from and its value:
    the Jensen–Shannon divergence weighted by the two totals (the G-statistic over 2N). Its expected
    value under a random split of the pooled counts depends only on those pooled counts, so a
    permutation null is fair whichever side is more varied (the equal-weight divergence's floor is set
    by the sparser side)."""
    t = np.vstack([a, b]).astype(float)
    t = t[:, t.sum(0) > 0]
    total = t.sum()
    if total == 0:
        return 0.0
    expected = t.sum(1, keepdims=True) * t.sum(0, keepdims=True) / total
    nz = t > 0
    return float(np.sum(t[nz] * np.log(t[nz] / expected[nz])) / total)


def _log_freq(tot: np.ndarray) -> np.ndarray:
    """Log relative frequency of each value, with half a count added to every value."""
    out: np.ndarray = np.log((tot + 0.5) / (tot.sum() + 0.5 * N_VALUES))
    return out


class NumberFrequency:
    """How far the dataset's distribution of numbers is from the reference's (mutual information
    between source and value, i.e. the size-weighted Jensen–Shannon divergence), with a permutation
    test over samples of equal length; per sample, the mean log-ratio of its
    numbers' frequencies (leave-one-out, so a sample never scores itself)."""

    name = "number_frequency"

    def __init__(self, reference: Sequence[Sample], n_permutations: int = 500, seed: int = 0) -> None:
        self.ref = number_counts(reference)
        self.n_perm, self.seed = n_permutations, seed

    def score(self, samples: Sequence[Sample]) -> DetectorResult:
        data = number_counts(samples)
        d_tot, r_tot = data.sum(0), self.ref.sum(0)
        stat = _mutual_information(d_tot, r_tot)
        rng = np.random.default_rng(self.seed)
        pooled = np.vstack([data, self.ref])
        # labels are permuted within samples of equal length: a sample's numbers are not independent
        # draws, so samples of another length are not exchangeable with it even when the values come
        # from one distribution (a teacher that writes shorter lists would otherwise look closer than chance)
        is_data = np.arange(len(pooled)) < len(data)
        lengths = pooled.sum(1)
        strata = [np.flatnonzero(lengths == v) for v in np.unique(lengths)]
        null = []
        for _ in range(self.n_perm):
            lab = is_data.copy()
            for st in strata:
                lab[st] = rng.permutation(is_data[st])
            null.append(_mutual_information(pooled[lab].sum(0), pooled[~lab].sum(0)))
        p = (1 + sum(x >= stat for x in null)) / (1 + self.n_perm)
        # the raw divergence grows as samples get fewer or more varied; its distance from the permutation
        # null in null standard deviations is comparable across datasets of different size and make-up
        z = float((stat - np.mean(null)) / max(float(np.std(null)), 1e-12)) if len(null) > 1 else float("nan")
        p_d = (d_tot[None, :] - data + 0.5) / (d_tot.sum() - data.sum(1, keepdims=True) + 0.5 * N_VALUES)
        log_ratio = np.log(p_d) - _log_freq(r_tot)[None, :]
        k = data.sum(1)
        scores = np.where(k > 0, (data * log_ratio).sum(1) / np.maximum(k, 1), 0.0)
        top = np.argsort(-(d_tot / max(d_tot.sum(), 1) - r_tot / max(r_tot.sum(), 1)))[:10]
        return DetectorResult(self.name, scores, stat, float(p), {
            "mutual_information": stat, "z": z, "over_represented": [int(v) for v in top]})

    def scores_under(self, audited: Sequence[Sample], others: Sequence[Sample]) -> np.ndarray:
        """Scores of samples outside the audited dataset, on the same scale as ``score(audited)``'s:
        the mean log-ratio of their numbers' frequencies in the audited data vs the reference."""
        log_ratio = _log_freq(number_counts(audited).sum(0)) - _log_freq(self.ref.sum(0))
        x = number_counts(others)
        k = x.sum(1)
        out: np.ndarray = np.where(k > 0, (x * log_ratio[None, :]).sum(1) / np.maximum(k, 1), 0.0)
        return out


class NumberFrequencyParams(Params):
    n_permutations: int = Field(500, ge=1)
    """Label permutations of the null (within samples of equal length)."""


def _run(ctx: AuditContext, params: NumberFrequencyParams) -> DetectorResult:
    return NumberFrequency(ctx.data.reference, params.n_permutations, ctx.seed).score(ctx.data.samples)


DETECTORS.add("number_frequency", Detector(
    "number_frequency", _run,
    "mutual information between source and number, permutation test within samples of equal length",
    needs_numbers=True, params=NumberFrequencyParams))
