"""Ranking candidate traits by their mean lean over units (samples or chunks), against a baseline."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.stats import ttest_1samp, ttest_ind

from sublim.audit.detectors.base import DetectorResult
from sublim.audit.targeted import panel_tests


def ranked(name: str, raw: np.ndarray, reference: np.ndarray | None, contrasts: Sequence[np.ndarray],
           cands: Sequence[str], n_boot: int, seed: int) -> DetectorResult:
    """Rank candidates by their mean lean over units (samples or chunks, rows of ``raw``) minus the
    baseline's mean (the contrast datasets' pooled if given, else the reference sample's, else zero), with
    bootstrap CIs over units; p: is the top candidate's lean above the baseline's (Welch) or above
    zero, Bonferroni-corrected for having picked the best of the candidates. With contrasts, ``panel`` holds each
    candidate's targeted test against them (:func:`sublim.audit.targeted.panel_tests`)."""
    contrast = np.vstack(contrasts) if len(contrasts) else None
    baseline = contrast if contrast is not None else reference
    against = ("contrast datasets" if contrast is not None else
               "reference sample" if reference is not None else "zero")

    lean = raw - (baseline.mean(0)[None, :] if baseline is not None else 0.0)
    means = lean.mean(0)
    rng = np.random.default_rng(seed)
    boots = np.stack([lean[rng.integers(0, len(lean), len(lean))].mean(0) for _ in range(n_boot)])
    order = np.argsort(-means)
    ranking = [{"trait": cands[j], "lean": float(means[j]), "low": float(np.quantile(boots[:, j], 0.025)),
                "high": float(np.quantile(boots[:, j], 0.975))} for j in order]
    top = int(order[0])
    if baseline is not None:
        p_one = ttest_ind(raw[:, top], baseline[:, top], equal_var=False, alternative="greater").pvalue
    else:
        p_one = ttest_1samp(raw[:, top], 0.0, alternative="greater").pvalue
    p = min(1.0, float(p_one) * len(cands)) if np.isfinite(p_one) else 1.0
    return DetectorResult(name, lean[:, top], float(means[top]), p,
                          {"top_trait": cands[top], "ranking": ranking, "against": against,
                           "panel": panel_tests(raw, contrasts, cands, seed=seed)})
