"""Effects: a trait student against its control, over questions and over trained runs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from sublim.evaluate.stats import bootstrap_ci, mean_ci, paired_permutation_test, wilcoxon_test


def _ratio(a: np.ndarray, b: np.ndarray) -> float:
    mb = float(np.mean(b))
    return float(np.mean(a)) / mb if mb > 0 else float("inf")


def _diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(a) - np.mean(b))


def paired_effect(
    treated: Sequence[float] | np.ndarray, control: Sequence[float] | np.ndarray, n_bootstrap: int = 2000, seed: int = 0
) -> dict[str, Any]:
    """Effect of treated over control on the same questions: difference and ratio of means with BCa bootstrap
    intervals, the Wilcoxon signed-rank test (exact) and a sign-flip permutation test."""
    a = np.asarray(treated, dtype=float)
    b = np.asarray(control, dtype=float)
    p_wilcoxon, how = wilcoxon_test(a, b, seed)
    return {
        "treated_mean": float(a.mean()),
        "control_mean": float(b.mean()),
        "difference": bootstrap_ci(_diff, a, b, n_resamples=n_bootstrap, seed=seed, paired=True).as_dict(),
        "ratio": bootstrap_ci(_ratio, a, b, n_resamples=n_bootstrap, seed=seed, paired=True).as_dict(),
        "p_wilcoxon": p_wilcoxon,
        "wilcoxon_method": how,
        "p_permutation": paired_permutation_test(a, b, seed=seed),
        "n": int(a.size),
        "fraction_higher": float(np.mean(a > b)),
    }


def across_runs(treated: Sequence[float] | np.ndarray, control: Sequence[float] | np.ndarray) -> dict[str, Any]:
    """The trained run as the unit: per-seed means, paired by seed."""
    a = np.asarray(treated, dtype=float)
    b = np.asarray(control, dtype=float)
    out: dict[str, Any] = {
        "n_runs": int(a.size),
        "treated": mean_ci(a).as_dict(),
        "control": mean_ci(b).as_dict(),
        "difference": mean_ci(a - b).as_dict(),
    }
    if a.size >= 2:
        out["p_permutation"] = paired_permutation_test(a, b)
        out["note"] = (
            f"exact sign-flip test over {a.size} runs: the smallest possible p is {2 / 2**a.size:.3g}"
        )
    return out
