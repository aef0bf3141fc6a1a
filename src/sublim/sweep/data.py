"""What a sweep's report shows, from its runs' results: the teacher (one teacher seed of one run) as the unit.

For each series (the runs that differ only in trait target and seed): per target, the trait student's
probability and share of its own target against the control student's (across-run mean, CI and an exact
sign-flip test); and the trait × student matrix: how much each target's student raised the share of
every target in the sweep over the control, with across-run CIs. The diagonal should stand out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from sublim.evaluate.compare import across_runs
from sublim.evaluate.stats import mean_ci
from sublim.evaluate.verdict import pooled_effect, teacher_groups
from sublim.sweep.config import SweepRun

PER_RUN = ("seed", "arms.seeds", "trait.target")
"""Axes that make the units of one series (the rest name the series)."""


def _series_name(point: dict[str, Any]) -> str:
    rest = {k: v for k, v in point.items() if k not in PER_RUN}
    return ", ".join(f"{k}={v}" for k, v in rest.items()) or "all runs"


def _mean_means(runs: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    return {m: {n: float(np.mean([r[m][n] for r in runs])) for n in runs[0][m]} for m in ("prob", "share")}


def units(run: SweepRun, res: dict[str, Any]) -> list[dict[str, Any]]:
    """One unit per teacher seed of a preference run: its trait students' and control students' candidate means
    (averaged over the student seeds nested in it; a base-data control, which has no teacher, serves every
    teacher)."""
    cands = res.get("candidates")
    target = run.config.trait.target
    if not cands or f"student-{target}" not in cands:
        return []
    treated, control = cands[f"student-{target}"], cands[res.get("control_arm", "student-control")]
    tseeds = res.get("teacher_seeds", [0])
    label = tseeds if len(tseeds) > 1 else run.config.arms.seeds[:1]  # a sweep's seeds axis sets student seeds
    return [{"run_id": res["run_id"], "seed": lab, "target": target,
             "student": _mean_means([treated[i] for i in tg]), "control": _mean_means([control[i] for i in cg])}
            for lab, (tg, cg) in zip(label, teacher_groups(len(treated), len(control), len(tseeds)), strict=True)]


def sweep_data(runs: Sequence[SweepRun], results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    grouped: dict[str, list[dict[str, Any]]] = {}
    skipped = []
    for run, res in zip(runs, results, strict=True):
        got = units(run, res)
        if not got:
            skipped.append(res["run_id"])
        grouped.setdefault(_series_name(run.point), []).extend(got)
    series = {name: _series(us) for name, us in grouped.items() if us}
    pooled = pooled_by_series(runs, results)
    return {"series": series, **({"pooled": pooled} if pooled else {}),
            **({"skipped_runs": skipped} if skipped else {})}


def pooled_by_series(runs: Sequence[SweepRun], results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per series of two or more trait targets, each against its neutral students: the pooled verdict across
    the targets, the teacher seed as the unit (:func:`pooled_effect`). Runs of other designs are left out."""
    grouped: dict[str, list[tuple[str, list[int], dict[str, Any]]]] = {}
    floors: dict[str, set[float]] = {}
    for run, res in zip(runs, results, strict=True):
        rep = res.get("replicated")
        if not rep or rep.get("control") != "neutral":
            continue
        name = _series_name(run.point)
        grouped.setdefault(name, []).append((run.config.trait.target, list(res.get("teacher_seeds", [0])), rep))
        floors.setdefault(name, set()).add(rep["min_effect"])
    return {name: pooled_effect(got, floors[name].pop()) for name, got in grouped.items()
            if len({t for t, _, _ in got}) > 1 and len(floors[name]) == 1}


def _series(us: list[dict[str, Any]]) -> dict[str, Any]:
    targets = list(dict.fromkeys(u["target"] for u in us))
    own: dict[str, Any] = {}
    gain: dict[str, dict[str, Any]] = {}
    for t in targets:
        mine = [u for u in us if u["target"] == t]
        own[t] = {m: across_runs([u["student"][m][t] for u in mine], [u["control"][m][t] for u in mine])
                  for m in ("prob", "share")}
        own[t]["seeds"] = [u["seed"] for u in mine]
        gain[t] = {a: mean_ci(np.array([u["student"]["share"][a] - u["control"]["share"][a] for u in mine])).as_dict()
                   for a in targets}
    diagonal_first = all(max(gain[t], key=lambda a: gain[t][a]["value"]) == t for t in targets) if len(targets) > 1 \
        else None
    return {"targets": targets, "n_units": len(us), "own_target": own,
            "share_gain_matrix": gain, "diagonal_largest_in_every_row": diagonal_first}
