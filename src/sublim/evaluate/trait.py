"""Trait metrics: exact first-token probability, share among candidates, sampled rate."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from sublim.evaluate.stats import wilson_interval
from sublim.models.generation import answer_probs, batches, chat_text, generate_batch
from sublim.traits.preference import AnswerForms, match_answer


def candidate_probs(probs: np.ndarray, forms: AnswerForms) -> dict[str, np.ndarray]:
    """Per question, the probability that the answer starts with each candidate: name → [n]."""
    out: dict[str, np.ndarray] = {}
    col = 0
    for name, seqs in forms.by_candidate.items():
        out[name] = probs[:, col : col + len(seqs)].sum(axis=1)
        col += len(seqs)
    return out


def shares(cand: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Each candidate's probability renormalized over all candidates, per question."""
    total = np.sum(np.stack(list(cand.values())), axis=0)
    safe = np.where(total > 0, total, 1.0)
    return {name: np.where(total > 0, p / safe, 0.0) for name, p in cand.items()}


def evaluate_model(
    model: Any,
    tokenizer: Any,
    questions: Sequence[str],
    candidates: dict[str, list[str]],
    forms: AnswerForms,
    *,
    samples_per_question: int,
    temperature: float,
    max_new_tokens: int,
    batch_size: int,
    seed: int,
    system: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Score one model on the questions: per-question rows and a summary over candidates."""
    prompts = [chat_text(tokenizer, q, system=system) for q in questions]
    probs = answer_probs(model, tokenizer, prompts, forms.flat(), batch_size, progress)
    cand = candidate_probs(probs, forms)
    share = shares(cand)
    total = np.sum(np.stack(list(cand.values())), axis=0)
    answers: list[list[str]] = [[] for _ in questions]
    if samples_per_question > 0:
        expanded = [i for i in range(len(questions)) for _ in range(samples_per_question)]
        for b, chunk in enumerate(batches(range(len(expanded)), batch_size)):
            outs = generate_batch(model, tokenizer, [prompts[expanded[j]] for j in chunk], chunk,
                                  max_new_tokens=max_new_tokens, temperature=temperature,
                                  seed=seed * 100003 + b)
            for o in outs:
                answers[expanded[o.index]].append(o.text)
            if progress:
                progress(len(chunk))
    rows = []
    for qi, q in enumerate(questions):
        rows.append({
            "question": q,
            "prob": {n: float(p[qi]) for n, p in cand.items()},
            "share": {n: float(s[qi]) for n, s in share.items()},
            "candidate_total": float(total[qi]),
            "answers": answers[qi],
            "matched": [match_answer(a, candidates) for a in answers[qi]],
        })
    return rows, summarize(rows, list(candidates))


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
