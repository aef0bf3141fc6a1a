"""How well detectors separate datasets: AUROC, the rank of the true trait, and dataset-level statistics over
random subsets. Shared by the audit benchmarks."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import roc_auc_score

from sublim.audit.data import Sample
from sublim.audit.detectors import BagOfNumbers, DetectorResult, NumberFrequency


def auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    """Probability that a positive scores above a negative."""
    y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    return float(roc_auc_score(y, np.r_[pos, neg]))


def rank_of(res: DetectorResult, trait: str) -> int:
    """The true trait's place in a ranking detector's ranking (1 = top)."""
    return 1 + [r["trait"] for r in res.details["ranking"]].index(trait)


def subset_statistics(pos: Sequence[Sample], neg: Sequence[Sample], ref: Sequence[Sample], pos_lean: np.ndarray,
                      neg_lean: np.ndarray, n: int, subsets: int,
                      seed: int) -> dict[str, tuple[list[float], list[float]]]:
    """Each detector's dataset statistic on ``subsets`` random subsets of size n of the positives and of
    the negatives (the likelihood shift only where enough samples were scanned: pass empty leans to skip)."""
    rng = np.random.default_rng(seed)
    stats: dict[str, tuple[list[float], list[float]]] = {k: ([], []) for k in
                                                        ("number_frequency", "bag_of_numbers", "likelihood_shift")}
    freq = NumberFrequency(ref, n_permutations=100, seed=seed)
    bag = BagOfNumbers(ref, seed=seed)
    for _ in range(subsets):
        for which, data, lean in ((0, pos, pos_lean), (1, neg, neg_lean)):
            sub = [data[i] for i in rng.choice(len(data), n, replace=False)]
            stats["number_frequency"][which].append(freq.score(sub).details["z"])
            stats["bag_of_numbers"][which].append(bag.score(sub).statistic)
            if 2 * n <= min(len(pos_lean), len(neg_lean)):  # the likelihood scan ran on fewer samples
                stats["likelihood_shift"][which].append(float(lean[rng.choice(len(lean), n, replace=False)].mean()))
    return stats

