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

Across the traits of a sweep (:func:`pooled_effect`) the unit is the teacher seed, whose neutral teacher every
trait's run shares: a seed's value is the mean of its traits' gains.

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


POOLED_UNIT = "teacher seed (its neutral teacher and every trait's teacher of that seed)"


def pooled_effect(runs: Sequence[tuple[str, Sequence[int], dict[str, Any]]], min_effect: float) -> dict[str, Any]:
    """Across traits (a sweep's animals), the teacher seed as the unit: the rule the README states before the
    fresh seeds it judges.

    ``runs``: per trait run, its target, the teacher seeds it used (after any spare replaced one) and its
    ``replicated`` effect against the neutral student. The runs of one sweep share each seed's neutral teacher,
    so the gains of different traits at one seed are not independent: a seed's unit value is the mean of the
    traits' gains at that seed, and seeds are the units (a spare seed used by one trait is a unit of its own).
    Then the same interval, p and words as one trait's verdict."""
    if any(rep.get("control") != "neutral" for _, _, rep in runs):
        raise ValueError("a pooled verdict needs every run against its neutral students")
    by_seed: dict[int, dict[str, list[Any]]] = {}
    for target, seeds, rep in runs:
        gains = zip(seeds, *(rep[k]["per_teacher"] for k in ("log_share_gain", "log_prob_gain",
                                                            "log_candidate_total_gain")), strict=True)
        for seed, share, prob, total in gains:
            unit = by_seed.setdefault(int(seed), {"targets": [], "share": [], "prob": [], "total": []})
            for key, value in (("targets", target), ("share", share), ("prob", prob), ("total", total)):
                unit[key].append(value)
    seeds = sorted(by_seed)
    mean = {k: np.array([np.mean(by_seed[s][k]) for s in seeds]) for k in ("share", "prob", "total")}
    out: dict[str, Any] = {
        "unit": POOLED_UNIT, "n_teachers": len(seeds), "control": "neutral", "min_effect": min_effect,
        "targets": list(dict.fromkeys(t for t, _, _ in runs)),
        "units": [{"seed": s, "targets": by_seed[s]["targets"], "log_share_gain": float(mean["share"][i])}
                  for i, s in enumerate(seeds)],
        "log_share_gain": _gain(mean["share"]), "log_prob_gain": _gain(mean["prob"]),
        "log_candidate_total_gain": _gain(mean["total"])}
    out["word"] = verdict_word(out)
    out["verdict"] = pooled_line(out)
    return out


def pooled_line(eff: dict[str, Any]) -> str:
    """One line for the pooled verdict: the word, the mean trait share gain over the traits with its unit."""
    n, word, s = eff["n_teachers"], eff["word"], eff["log_share_gain"]
    floor = math.exp(eff["min_effect"])
    traits = ", ".join(eff["targets"])
    if n < 2:
        return f"{word}: one teacher seed, so no interval; own-trait share ×{s['ratio']:.2f} over the neutral " \
               f"student, averaged over {traits}"
    why = ""
    if word == "NO TRANSFER":
        why = f" (the interval rules out ×{floor:.2f})" if s["high"] < eff["min_effect"] else \
            f" (inconclusive: the interval reaches ×{floor:.2f})"
    return (f"{word}{why} across {traits}: own-trait share ×{s['ratio']:.2f} [{math.exp(s['low']):.2f}, "
            f"{math.exp(s['high']):.2f}] over the neutral student, 95% t interval over {n} teacher seeds (each the "
            f"mean over its traits), sign-flip p={s['p_sign_flip']:.2g} (smallest possible {2 / 2**n:.2g}); "
            f"transfer needs > ×{floor:.2f}; candidate total ×{eff['log_candidate_total_gain']['ratio']:.2f}")
