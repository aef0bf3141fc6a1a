"""The verdict of a preference experiment, the teacher as the unit (the rule the README states before results).

Per teacher seed: the trait student's log share of the trait (the share averaged over questions, then over the
teacher's student seeds, in logs) minus the control student's — the neutral teacher's student of the same
seed. The mean of these gains over teachers gets a 95% Student-t interval and an exact two-sided sign-flip p
(with n teachers the smallest p is 2/2^n). Words:

- TRANSFER: the interval's lower end exceeds the minimum effect stated in advance;
- GENERIC SHIFT: not that, but the candidate total (naming any candidate at all) rose by more than it;
- NO TRANSFER: neither; the line says whether the interval rules the minimum effect out;
- UNREPLICATED: one teacher; no teacher-level interval exists, and the question-level figures describe one
  trained model.

Pure functions of evaluation rows: no models here.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from sublim.core.files import Rows
from sublim.evaluate.stats import mean_ci, wilson_interval


def sign_flip_p(d: Sequence[float] | np.ndarray) -> float:
    """Exact two-sided sign-flip p of mean(d) = 0: the share of the 2^n sign patterns whose |mean| reaches the
    observed one (n ≤ 16 units)."""
    x = np.asarray(d, dtype=float)
    if x.size == 0 or x.size > 16:
        raise ValueError(f"an exact sign-flip test needs 1-16 units, not {x.size}")
    observed = abs(x.mean())
    signs = np.array(list(itertools.product((1.0, -1.0), repeat=x.size)))
    return float(np.mean(np.abs((signs * x).mean(1)) >= observed - 1e-12))


def _log_mean(runs: Sequence[Rows], value: Any) -> float:
    """The log of one arm's mean over questions, averaged over its runs (student seeds)."""
    return float(np.mean([math.log(max(np.mean([value(r) for r in rows]), 1e-30)) for rows in runs]))


def teacher_groups(n_treated: int, n_control: int, n_teachers: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per teacher seed, the indices of its treated runs and of the control runs it is paired with. Runs are
    ordered teacher by teacher, student seeds nested; a control with one group of runs (base data: no teacher)
    serves every teacher."""
    t_groups = np.array_split(np.arange(n_treated), n_teachers)
    c_groups = np.array_split(np.arange(n_control), n_teachers) if n_control == n_treated \
        else [np.arange(n_control)] * n_teachers
    return list(zip(t_groups, c_groups, strict=True))


def per_teacher(treated: Sequence[Rows], control: Sequence[Rows], n_teachers: int, value: Any) -> np.ndarray:
    """Per teacher seed, the treated arm's log mean minus the control's (see :func:`teacher_groups`)."""
    return np.array([_log_mean([treated[i] for i in tg], value) - _log_mean([control[i] for i in cg], value)
                     for tg, cg in teacher_groups(len(treated), len(control), n_teachers)])


def _gain(d: np.ndarray) -> dict[str, Any]:
    ci = mean_ci(d) if d.size > 1 else None
    return {"per_teacher": [float(x) for x in d], "mean": float(d.mean()),
            "low": ci.low if ci else None, "high": ci.high if ci else None,
            "p_sign_flip": sign_flip_p(d) if d.size > 1 else None,
            "ratio": math.exp(float(d.mean()))}


def sampled(runs: Sequence[Rows], target: str) -> dict[str, Any]:
    """How many sampled answers name ``target``, over every run of an arm, with a Wilson interval."""
    k = sum(m == target for rows in runs for r in rows for m in r.get("matched", []))
    n = sum(len(r.get("matched", [])) for rows in runs for r in rows)
    return {"named": k, "answers": n, "rate": wilson_interval(k, n).as_dict() if n else None}


def replicated_effect(treated: Sequence[Rows], control: Sequence[Rows], n_teachers: int, target: str,
                      control_name: str, min_effect: float) -> dict[str, Any]:
    """The trait student against its control with the teacher as the unit, and the verdict."""
    share = per_teacher(treated, control, n_teachers, lambda r: r["share"][target])
    prob = per_teacher(treated, control, n_teachers, lambda r: r["prob"][target])
    total = per_teacher(treated, control, n_teachers, lambda r: r["candidate_total"])
    out = {"unit": "teacher seed", "n_teachers": n_teachers, "control": control_name, "min_effect": min_effect,
           "log_share_gain": _gain(share), "log_prob_gain": _gain(prob), "log_candidate_total_gain": _gain(total),
           "sampled": {"treated": sampled(treated, target), "control": sampled(control, target)}}
    out["word"] = verdict_word(out)
    out["verdict"] = verdict_line(target, out)
    return out


def verdict_word(eff: dict[str, Any]) -> str:
    share, total, floor = eff["log_share_gain"], eff["log_candidate_total_gain"], eff["min_effect"]
    if eff["n_teachers"] < 2:
        return "UNREPLICATED"
    if share["low"] > floor:
        return "TRANSFER"
    if total["low"] > floor:
        return "GENERIC SHIFT"
    return "NO TRANSFER"


def verdict_line(target: str, eff: dict[str, Any]) -> str:
    """One line: the word, the primary endpoint with its unit, and the figures printed beside it."""
    n, word, s = eff["n_teachers"], eff["word"], eff["log_share_gain"]
    floor = math.exp(eff["min_effect"])
    if n < 2:
        head = f"{word}: one teacher, so no teacher-level interval; {target} share ×{s['ratio']:.2f} over the " \
               f"{eff['control']} student (one trained pair, not evidence of transfer)"
    else:
        why = ""
        if word == "NO TRANSFER":
            why = f" (the interval rules out ×{floor:.2f})" if s["high"] < eff["min_effect"] else \
                f" (inconclusive: the interval reaches ×{floor:.2f})"
        head = (f"{word}{why}: {target} share ×{s['ratio']:.2f} [{math.exp(s['low']):.2f}, {math.exp(s['high']):.2f}] "
                f"over the {eff['control']} student, 95% t interval over {n} teacher pairs, sign-flip "
                f"p={s['p_sign_flip']:.2g} (smallest possible {2 / 2**n:.2g}); transfer needs > ×{floor:.2f}")
    t, c = eff["sampled"]["treated"], eff["sampled"]["control"]
    named = f"sampled answers naming {target}: {t['named']}/{t['answers']} vs {c['named']}/{c['answers']}" \
        if t["answers"] or c["answers"] else "no sampled answers"
    return (f"{head}; {target} probability ×{eff['log_prob_gain']['ratio']:.2f}, candidate total "
            f"×{eff['log_candidate_total_gain']['ratio']:.2f}; {named}")
