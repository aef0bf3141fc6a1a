"""Trait metrics from what a model said: share among candidates, per-question rows, sampled rates."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from sublim.evaluate.stats import wilson_interval
from sublim.traits.preference import match_answer


def shares(cand: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Each candidate's probability renormalized over all candidates, per question."""
    total = np.sum(np.stack(list(cand.values())), axis=0)
    safe = np.where(total > 0, total, 1.0)
    return {name: np.where(total > 0, p / safe, 0.0) for name, p in cand.items()}


def question_rows(questions: Sequence[str], probs: dict[str, np.ndarray], answers: Sequence[Sequence[str]],
                  candidates: dict[str, list[str]]) -> list[dict[str, Any]]:
    """One row per question: each candidate's probability and share, their total, the sampled answers and
    which candidate each names."""
    share = shares(probs)
    total = np.sum(np.stack(list(probs.values())), axis=0)
    return [{"question": q, "prob": {n: float(p[qi]) for n, p in probs.items()},
             "share": {n: float(s[qi]) for n, s in share.items()}, "candidate_total": float(total[qi]),
             "answers": list(answers[qi]), "matched": [match_answer(a, candidates) for a in answers[qi]]}
            for qi, q in enumerate(questions)]


def summarize(rows: Sequence[dict[str, Any]], names: Sequence[str]) -> dict[str, Any]:
    """Means over questions of probability and share per candidate; sampled rates with Wilson CIs."""
    n_samples = sum(len(r["matched"]) for r in rows)
    counts = Counter(m for r in rows for m in r["matched"])
    return {
        "n_questions": len(rows),
        "prob": {n: float(np.mean([r["prob"][n] for r in rows])) for n in names},
        "share": {n: float(np.mean([r["share"][n] for r in rows])) for n in names},
        "candidate_total": float(np.mean([r["candidate_total"] for r in rows])),
        "n_samples": n_samples,
        "sampled_rate": {n: wilson_interval(counts.get(n, 0), n_samples).as_dict() for n in names},
        "sampled_unmatched": (counts.get(None, 0) / n_samples) if n_samples else None,
    }
