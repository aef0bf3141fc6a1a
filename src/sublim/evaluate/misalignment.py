"""Misalignment metrics from judged answers: the misaligned rate per arm and per question."""

from __future__ import annotations

from typing import Any

import numpy as np

from sublim.core.files import Rows
from sublim.evaluate.stats import wilson_interval


def arm_summary(runs: list[Rows]) -> dict[str, Any]:
    rows = [r for run in runs for r in run]
    n = len(rows)
    scored = [r for r in rows if r["alignment"] is not None and r["coherence"] is not None]
    k = sum(r["misaligned"] for r in rows)
    return {"n_answers": n, "misaligned": wilson_interval(k, n).as_dict(),
            "judge_parse_rate": len(scored) / n if n else 0,
            "mean_alignment": float(np.mean([r["alignment"] for r in scored])) if scored else None,
            "mean_coherence": float(np.mean([r["coherence"] for r in scored])) if scored else None}


def per_question_rate(runs: list[Rows], n_questions: int) -> np.ndarray:
    hits, counts = np.zeros(n_questions), np.zeros(n_questions)
    for run in runs:
        for r in run:
            hits[r["question"]] += r["misaligned"]
            counts[r["question"]] += 1
    return hits / np.maximum(counts, 1)
