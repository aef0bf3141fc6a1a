"""From per-question evaluation rows of every arm to effects, the specificity matrix and a verdict.

Pure functions of evaluation outputs: no models here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from sublim.core.files import Rows
from sublim.evaluate.compare import across_runs, paired_effect
from sublim.evaluate.stats import bootstrap_ci
from sublim.evaluate.verdict import replicated_effect


def per_question(rows: Rows, metric: str, name: str) -> np.ndarray:
    return np.array([r[metric][name] for r in rows], dtype=float)


def pooled(runs: Sequence[Rows], metric: str, name: str) -> np.ndarray:
    """Per-question values averaged over the runs (seeds) of one arm."""
    return np.mean([per_question(r, metric, name) for r in runs], axis=0)


def _mean_interval(values: np.ndarray, n_bootstrap: int) -> dict[str, float]:
    return bootstrap_ci(lambda x: float(np.mean(x)), values, n_resamples=n_bootstrap).as_dict()


def arm_table(arms: Mapping[str, Sequence[Rows]], names: Sequence[str], n_bootstrap: int) -> dict[str, Any]:
    """For each arm: mean probability and share of each named candidate, with bootstrap CIs."""
    table: dict[str, Any] = {}
    for arm, runs in arms.items():
        entry: dict[str, Any] = {"n_runs": len(runs)}
        for name in names:
            entry[f"prob_{name}"] = _mean_interval(pooled(runs, "prob", name), n_bootstrap)
            entry[f"share_{name}"] = _mean_interval(pooled(runs, "share", name), n_bootstrap)
        totals = np.mean([[r["candidate_total"] for r in rows] for rows in runs], axis=0)
        entry["candidate_total"] = _mean_interval(totals, n_bootstrap)
        table[arm] = entry
    return table


def candidate_means(arms: Mapping[str, Sequence[Rows]], names: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    """For each arm, per trained run (seed): every candidate's mean probability and share over the questions
    (what a sweep compares across runs: the trait × student matrix)."""
    return {arm: [{metric: {n: float(per_question(rows, metric, n).mean()) for n in names}
                   for metric in ("prob", "share")} for rows in runs] for arm, runs in arms.items()}


def effect(treated: Sequence[Rows], control: Sequence[Rows], name: str, n_bootstrap: int) -> dict[str, Any]:
    """Trait student vs control: pooled over seeds by question, per seed, and across runs."""
    out: dict[str, Any] = {}
    for metric in ("prob", "share"):
        m: dict[str, Any] = {"pooled": paired_effect(pooled(treated, metric, name),
                                                     pooled(control, metric, name), n_bootstrap)}
        if len(treated) > 1 and len(treated) == len(control):
            m["per_run"] = [
                paired_effect(per_question(t, metric, name), per_question(c, metric, name), n_bootstrap)
                for t, c in zip(treated, control, strict=True)
            ]
            m["across_runs"] = across_runs(
                [float(per_question(t, metric, name).mean()) for t in treated],
                [float(per_question(c, metric, name).mean()) for c in control],
            )
        out[metric] = m
    return out


def question_level(target: str, eff: dict[str, Any]) -> str:
    """One line describing the trait student against its control over the question paraphrases, pooled over
    runs: a description of the trained models, not evidence of transfer (the questions move together, so their
    p sits at its floor for any shift; the verdict's unit is the teacher)."""
    p, s = eff["prob"]["pooled"], eff["share"]["pooled"]
    return (
        f"question level, {p['n']} paraphrases (describes these models; not the verdict): {target} probability "
        f"{p['treated_mean']:.4f} vs {p['control_mean']:.4f}, ×{p['ratio']['value']:.2f} "
        f"[{p['ratio']['low']:.2f}, {p['ratio']['high']:.2f}], Wilcoxon p={p['p_wilcoxon']:.2g}; "
        f"{target} share {s['treated_mean']:.3f} vs {s['control_mean']:.3f}, p={s['p_wilcoxon']:.2g}"
    )


def matrix(students: Mapping[str, Sequence[Rows]], traits: Sequence[str], n_bootstrap: int, n_teachers: int,
           min_effect: float) -> dict[str, Any]:
    """Specificity: each trait student's share of each trait, and the diagonal contrasts.

    For traits (A, B): A's student should give A a larger share than B's student does, and B's student B a larger
    share than A's student does. The diagonal holds when both contrasts are TRANSFER by the verdict's rule, the
    teacher seed as the unit (A's and B's students of one seed paired); the question-level contrasts
    (``diagonal``) describe the trained models only.
    """
    cells = {s: {t: _mean_interval(pooled(runs, "share", t), n_bootstrap) for t in traits}
             for s, runs in students.items()}
    a, b = traits[0], traits[1]
    diagonal = {own: effect(students[own], students[other], own, n_bootstrap)["share"]
                for own, other in ((a, b), (b, a))}
    replicated = {own: replicated_effect(students[own], students[other], n_teachers, own, f"{other} teacher's",
                                         min_effect) for own, other in ((a, b), (b, a))}
    return {"traits": list(traits), "share": cells, "diagonal": diagonal, "replicated": replicated,
            "diagonal_holds": all(r["word"] == "TRANSFER" for r in replicated.values()),
            "question_level_diagonal_holds": all(d["pooled"]["difference"]["low"] > 0 for d in diagonal.values())}
