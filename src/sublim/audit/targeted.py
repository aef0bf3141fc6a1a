"""Targeted tests against a panel: does this dataset lean toward candidate c more than comparable datasets do?

A row reading ("which candidate comes first for this dataset?") is dominated by each candidate's generic pull; read
per candidate across datasets, the question has an answer. For each candidate the dataset's mean lean is compared
with the panel's (the contrast datasets' samples pooled): the excess, a Welch t interval on it, and a one-sided
permutation p over samples (the dataset's and the panel's labels shuffled). The permutations treat samples as the
units, so they answer for these panel datasets, not for every generator that could have written one; the rule
therefore also asks that the dataset lean more than each panel dataset alone (its rank among the datasets).
p-values are Holm-corrected across every (detector, candidate) test the audit makes.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.stats import ttest_ind

N_PERMUTATIONS = 9999
"""Label shuffles per test: the smallest p is 1/10,000, below Holm's 0.01/20 for twenty candidates."""


def permutation_p(data: np.ndarray, panel: np.ndarray, n_perm: int, seed: int, chunk: int = 250) -> np.ndarray:
    """One-sided p per column: how often a random split of the pooled rows into groups of the data's and the
    panel's sizes gives the data's group a mean at least as far above the panel's as observed ((1 + hits) / (1 +
    n_perm); every column sees the same shuffles); exact, over every split, when there are no more splits than
    ``n_perm``."""
    pooled = np.vstack([data, panel])
    n, total = len(data), len(pooled)
    sums = pooled.sum(0)
    observed = data.mean(0) - panel.mean(0)
    if math.comb(total, n) <= n_perm:  # few rows (students, not samples): every split, an exact p
        splits = np.array(list(itertools.combinations(range(total), n)))
        mask = np.zeros((len(splits), total))
        np.put_along_axis(mask, splits, 1.0, axis=1)
        first = mask @ pooled
        diff = first / n - (sums[None, :] - first) / (total - n)
        exact: np.ndarray = (diff >= observed[None, :] - 1e-12).mean(0)
        return exact
    rng = np.random.default_rng(seed)
    hits = np.zeros(pooled.shape[1])
    for start in range(0, n_perm, chunk):
        k = min(chunk, n_perm - start)
        pick = np.argsort(rng.random((k, total)), axis=1)[:, :n]
        mask = np.zeros((k, total))
        np.put_along_axis(mask, pick, 1.0, axis=1)
        first = mask @ pooled  # [k, columns]: the shuffled data group's sums
        diff = first / n - (sums[None, :] - first) / (total - n)
        hits += (diff >= observed[None, :] - 1e-12).sum(0)
    out: np.ndarray = (1.0 + hits) / (1.0 + n_perm)
    return out


def welch_interval(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """95% Welch t interval on mean(a) - mean(b)."""
    if len(a) < 2 or len(b) < 2:
        return float("nan"), float("nan")
    ci = ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    return float(ci.low), float(ci.high)


def panel_tests(lean: np.ndarray, panel: Sequence[np.ndarray], cands: Sequence[str], n_perm: int = N_PERMUTATIONS,
                seed: int = 0) -> list[dict[str, Any]]:
    """Per candidate (columns of ``lean``, samples x candidates; ``panel``: each contrast dataset's leans, same
    columns): the excess of the dataset's mean lean over the pooled panel's, its Welch interval, the permutation p
    (uncorrected), and the dataset's rank among all the datasets by mean lean (1: it leans most)."""
    if not panel or len(lean) < 2:
        return []
    pooled = np.vstack(panel)
    p = permutation_p(lean, pooled, n_perm, seed)
    means = np.vstack([lean.mean(0)] + [c.mean(0) for c in panel])  # [datasets, candidates]
    out = []
    for j, cand in enumerate(cands):
        low, high = welch_interval(lean[:, j], pooled[:, j])
        out.append({"candidate": cand, "excess": float(means[0, j] - pooled[:, j].mean()), "low": low, "high": high,
                    "p": float(p[j]), "rank": int(1 + (means[1:, j] > means[0, j]).sum()),
                    "n_datasets": len(means), "lean": float(means[0, j]),
                    "panel_leans": [float(x) for x in means[1:, j]]})
    return out


def holm(p: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values (step-down, monotone, capped at 1), in the order given."""
    order = np.argsort(p)
    m, running = len(p), 0.0
    adjusted = [1.0] * m
    for i, k in enumerate(order):
        running = max(running, min(1.0, (m - i) * float(p[k])))
        adjusted[int(k)] = running
    return adjusted


def targeted(detectors: Sequence[dict[str, Any]], candidates: Sequence[str] | None, alpha: float = 0.01
             ) -> dict[str, Any] | None:
    """The audit's targeted verdict from each detector's panel tests (``details['panel']``), restricted to
    ``candidates`` (None: every candidate), Holm-corrected across all of them. A candidate stands out for a
    detector when its adjusted p is below ``alpha`` and the dataset leans toward it more than each panel dataset
    does. None when no detector read a panel (no contrast datasets)."""
    tests = [{"detector": d["detector"], **t} for d in detectors for t in d.get("panel", ())
             if candidates is None or t["candidate"] in candidates]
    if not tests:
        return None
    for t, adj in zip(tests, holm([t["p"] for t in tests]), strict=True):
        t["p_holm"] = adj
        t["stands_out"] = bool(adj < alpha and t["rank"] == 1)
    out = [t for t in tests if t["stands_out"]]
    n_panel = tests[0]["n_datasets"] - 1
    how = f"Holm across {len(tests)} tests at {alpha:g}; panel of {n_panel} datasets"
    if out:
        said = "; ".join(f"{t['candidate']} ({t['detector']}: excess lean {t['excess']:+.3g} [{t['low']:+.3g}, "
                         f"{t['high']:+.3g}], p={t['p_holm']:.2g} adjusted, above each panel dataset)" for t in out)
        verdict = f"pushes toward {', '.join(dict.fromkeys(t['candidate'] for t in out))} more than the panel does: " \
                  f"{said} ({how})"
    else:
        best = min(tests, key=lambda t: t["p_holm"])
        verdict = (f"no candidate stands out against the panel (smallest adjusted p {best['p_holm']:.2g}: "
                   f"{best['candidate']}, {best['detector']}, rank {best['rank']} of {best['n_datasets']}; {how})")
    return {"candidates": list(candidates) if candidates is not None else None, "alpha": alpha, "tests": tests,
            "stands_out": [t["candidate"] for t in out], "verdict": verdict}
