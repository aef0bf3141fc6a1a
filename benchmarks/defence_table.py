"""Benchmark: the pre-registered defence table (the plan: benchmarks/defence_table_plan.md).

    python benchmarks/defence_table.py --generate-only    # eleven datasets at the dose, written to
                                                          # benchmarks/data/defence-table/ to commit
    python benchmarks/defence_table.py --max-students 6   # students, a sitting at a time, then the endpoints

The dose is the dose-response benchmark's smallest clear dose (benchmarks/results/dose-response-cpu.json); with no
clear dose the plan says the table is not run, and this script says so and stops. Five teacher seeds (40-44,
spares 45-47), each an owl and a neutral teacher, and the base model's own data; every dataset defended four ways
(none, replace_divergent, replace_divergent_ends, replace_divergent_diluted) and an SFT student trained on each.
Each student's reading is appended to benchmarks/data/defence-table/readings.jsonl as it is made, with the
commit that made it. Once all 44 are read it writes benchmarks/results/defence-table-<cpu|gpu>.json and a PNG.
"""

from __future__ import annotations

import itertools
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from benchlib.committed_data import (
    BF16,
    Pairs,
    generate_pairs,
    import_dataset,
    plan_commit,
    plan_precedes,
    require_bf16_cpu,
    sitting_args,
    sources_file,
    teacher_seeds,
)
from scipy.stats import t as student_t

from sublim.backends.local.throughput import throughput
from sublim.core.config import load_config
from sublim.core.files import read_jsonl
from sublim.core.records import benchmark, git_state
from sublim.core.store import Store
from sublim.evaluate.stats import mean_ci
from sublim.experiment.context import Context
from sublim.experiment.stages.defend import defended
from sublim.experiment.stages.evaluate import evaluation
from sublim.experiment.stages.prompts import prompts
from sublim.experiment.stages.train import student
from sublim.traits.preference import load_candidates

HERE = Path(__file__).resolve().parent
DATA = HERE / "data" / "defence-table"
PLAN = HERE / "defence_table_plan.md"
SEEDS, SPARES = [40, 41, 42, 43, 44], [45, 46, 47]
DEFENCES = ["none", "replace_divergent", "replace_divergent_ends", "replace_divergent_diluted"]
MIN_EFFECT = math.log(1.25)
PROMPTS_PER_SAMPLE = 24  # the plan's amendment 2 (4 before it)
ALPHA = 0.05
SAMPLES_PER_QUESTION = 4  # the sampled answers the plan describes: the project's default per question


def the_dose(results: Path) -> tuple[int, int]:
    """(examples, epochs): the dose-response benchmark's smallest clear dose; the plan's stop where it has none."""
    files = [results / f"dose-response-{w}.json" for w in ("cpu", "gpu") if (results / f"dose-response-{w}.json")
             .exists()]
    if not files:
        raise SystemExit("no dose-response result: run benchmarks/dose_response.py first (the plan takes its dose)")
    dose = json.loads(files[0].read_text())["results"]["smallest_clear_dose"]
    if dose is None:
        raise SystemExit(f"{files[0].name}: no dose is clear, so the plan runs no defence table (no transfer to "
                         "remove at any dose measured); report that")
    n, e = dose.split("x")
    return int(n), int(e)


def context(runs: Path, seed: int, dose: tuple[int, int], defence: str = "none", samples: int = 0) -> Context:
    """The plan's run at ``dose`` for teacher ``seed`` under ``defence``; ``samples`` answers sampled per question
    where the students are evaluated (0: the exact probabilities only, as for the endpoints)."""
    n, epochs = dose
    sets = [f"prompts.n={PROMPTS_PER_SAMPLE * n}", f"generation.until_kept={n}", f"teacher.seed={seed}",
            "student.method=sft", "student.lr=5e-5", f"student.epochs={epochs}",
            f"evaluation.samples_per_question={samples}",
            f"defence.method={defence}", "defence.fraction=0.1", "defence.seed=0"]
    require_bf16_cpu(PLAN)  # the plan's amendment: bf16 on a CPU, as its data so far were made
    return Context(load_config("owl-numbers", [*sets, *BF16]), Store(runs))


def plan_students(meta: dict[str, Any]) -> list[tuple[str, str]]:
    """(dataset, defence) of every student the plan names."""
    return [(name, d) for d in DEFENCES for name in meta]


def trained_student(ctx: Context, meta: dict[str, Any], name: str, defence: str, n: int, banned: list[str]
                    ) -> tuple[Any, dict[str, Any]]:
    """The SFT student of the committed dataset ``name`` under ``defence`` (trained, or found in the store) and what
    the defence did to its data."""
    base = ctx.local(ctx.cfg.model)
    data = import_dataset(ctx, DATA / f"{name}.jsonl", meta[name], f"table {name}")
    cost = {}
    if defence != "none":
        control = import_dataset(ctx, DATA / "control.jsonl", meta["control"], "table control")
        data = defended(ctx, data, control, f"{name} {defence}", prompts(ctx), banned, base)
        cost = data.manifest["defence"]
    return student(ctx, base, data, n, 0, base, f"student {name} {defence}"), cost


def sampled_answers(runs: Path, meta: dict[str, Any], dose: tuple[int, int]) -> list[dict[str, Any]]:
    """The plan's description of the students' sampled answers: each of the 44 students (found in the store, not
    trained again) answers every evaluation question ``SAMPLES_PER_QUESTION`` times at the preset's temperature;
    how many answers name each candidate, and a few of them."""
    cands = load_candidates("animals")
    banned = [w for words in cands.values() for w in words]
    out = []
    for name, d in plan_students(meta):
        ctx = context(runs, meta[name].get("seed", SEEDS[0]), dose, d, SAMPLES_PER_QUESTION)
        trained, _ = trained_student(ctx, meta, name, d, dose[0], banned)
        rows = read_jsonl(evaluation(ctx, trained, cands, 0).file("per_question.jsonl"))
        out.append({"dataset": name, "defence": d, **answer_counts(rows, list(cands))})
    return out


def answer_counts(rows: list[dict[str, Any]], names: list[str]) -> dict[str, Any]:
    """Of an evaluation's sampled answers: how many, how many name each candidate (those named at all) and owl,
    and the first answer to each of the first five questions."""
    matched = [m for r in rows for m in r["matched"]]
    named = {c: matched.count(c) for c in names if matched.count(c)}
    return {"answers": len(matched), "named": named, "owl": named.get("owl", 0),
            "examples": [r["answers"][0] for r in rows[:5] if r["answers"]]}


def read_students(runs: Path, meta: dict[str, Any], dose: tuple[int, int], budget: int) -> None:
    """Defend, train and read up to ``budget`` students not yet in readings.jsonl, appending each as it is read."""
    path = DATA / "readings.jsonl"
    done = {(r["dataset"], r["defence"]) for r in read_jsonl(path)} if path.exists() else set()
    cands = load_candidates("animals")
    banned = [w for words in cands.values() for w in words]
    for name, d in [s for s in plan_students(meta) if s not in done][:budget]:
        ctx = context(runs, meta[name].get("seed", SEEDS[0]), dose, d)
        t0 = time.time()
        trained, cost = trained_student(ctx, meta, name, d, dose[0], banned)
        rows = read_jsonl(evaluation(ctx, trained, cands, 0).file("per_question.jsonl"))
        reading = {"dataset": name, "defence": d, "examples": dose[0], "epochs": dose[1], "student_seed": 0,
                   "defence_cost": cost, "wall_time_s": round(time.time() - t0, 1), "git": git_state(),
                   "shares": [[r["share"][c] for c in cands] for r in rows],
                   "probs": [[r["prob"][c] for c in cands] for r in rows]}
        with path.open("a") as f:
            f.write(json.dumps(reading) + "\n")
        print(f"student {name} {d}: {reading['wall_time_s']} s", flush=True)


def owl_log_share(reading: dict[str, Any]) -> float:
    names = list(load_candidates("animals"))
    return float(np.log(np.array(reading["shares"]).mean(0)[names.index("owl")] + 1e-12))


def one_sided(x: np.ndarray) -> dict[str, float]:
    """Over the seeds: mean, 95% t interval, one-sided paired t p (mean > 0), exact one-sided sign-flip p."""
    ci = mean_ci(x)
    n = len(x)
    se = float(x.std(ddof=1)) / math.sqrt(n)
    p_t = float(student_t.sf(x.mean() / se, n - 1)) if se > 0 else float(x.mean() <= 0)
    signs = np.array(list(itertools.product((1.0, -1.0), repeat=n)))
    p_flip = float(np.mean((signs * x).mean(1) >= x.mean() - 1e-12))
    return {"mean": ci.value, "low": ci.low, "high": ci.high, "p_t": p_t, "p_sign_flip": p_flip, "n_seeds": n}


def fieller(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    """95% Fieller interval of mean(a) / mean(b) for paired a, b over seeds; None bounds where it is unbounded."""
    n = len(a)
    t2 = float(student_t.ppf(0.975, n - 1)) ** 2
    cov = np.cov(a, b, ddof=1)
    qa, qb, qab = a.mean() ** 2 - t2 * cov[0, 0] / n, b.mean() ** 2 - t2 * cov[1, 1] / n, \
        a.mean() * b.mean() - t2 * cov[0, 1] / n
    ratio = float(a.mean() / b.mean()) if b.mean() else float("nan")
    disc = qab ** 2 - qa * qb
    if qb <= 0 or disc < 0:
        return {"ratio": ratio, "low": None, "high": None}
    lo, hi = (qab - math.sqrt(disc)) / qb, (qab + math.sqrt(disc)) / qb
    return {"ratio": ratio, "low": float(lo), "high": float(hi)}


def holm(ps: dict[str, float]) -> dict[str, float]:
    """Holm-adjusted p-values (step-down, monotone)."""
    order = sorted(ps, key=lambda k: ps[k])
    out, running = {}, 0.0
    for i, k in enumerate(order):
        running = max(running, min(1.0, (len(ps) - i) * ps[k]))
        out[k] = running
    return out


def endpoints(readings: list[dict[str, Any]], seeds: list[int]) -> dict[str, Any]:
    """The plan's endpoints from the 44 readings."""
    by = {(r["dataset"], r["defence"]): owl_log_share(r) for r in readings}
    g = {d: np.array([by[(f"owl-{s}", d)] - by[(f"neutral-{s}", d)] for s in seeds]) for d in DEFENCES}
    transfer: dict[str, Any] = {**one_sided(g["none"])}
    transfer["word"] = "TRANSFER" if transfer["low"] > MIN_EFFECT else "NO TRANSFER"
    tests = {d: one_sided(g["none"] - g[d]) for d in DEFENCES[1:]}
    tests["ends_beyond_dilution"] = one_sided(g["replace_divergent_diluted"] - g["replace_divergent_ends"])
    adjusted = holm({k: v["p_t"] for k, v in tests.items()})
    claims = transfer["word"] == "TRANSFER"
    for k, v in tests.items():
        v["p_holm"] = adjusted[k]
        v["holds"] = bool(claims and adjusted[k] < ALPHA)
    per_defence = {}
    for d in DEFENCES[1:]:
        residual = one_sided(g[d])
        kept = fieller(g[d], g["none"])  # the share of the gain left; the share cut is 1 minus it
        per_defence[d] = {"cut": tests[d], "residual": residual,
                          "removes": bool(tests[d]["holds"] and residual["high"] < MIN_EFFECT),
                          "share_cut": {"mean": 1 - kept["ratio"],
                                        "low": None if kept["high"] is None else 1 - kept["high"],
                                        "high": None if kept["low"] is None else 1 - kept["low"]}}
    over = {d: {arm: [by[(f"{arm}-{s}", d)] - by[("control", d)] for s in seeds] for arm in ("owl", "neutral")}
            for d in DEFENCES}
    return {"per_seed": {d: g[d].tolist() for d in DEFENCES}, "seeds": seeds, "transfer": transfer,
            "defences": per_defence, "ends_beyond_dilution": tests["ends_beyond_dilution"],
            "claims_made": claims, "min_effect": MIN_EFFECT, "over_control": over,
            "over_control_mean": {d: {arm: mean_ci(np.array(v)).as_dict() for arm, v in arms.items()}
                                  for d, arms in over.items()}}


def described(readings: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """The plan's descriptions per dataset and defence: the candidates' total probability (averaged over questions;
    what any fine-tuning moves) and owl's share of it."""
    owl = list(load_candidates("animals")).index("owl")
    out: dict[str, dict[str, dict[str, float]]] = {}
    for r in readings:
        probs, shares = np.array(r["probs"]), np.array(r["shares"])
        out.setdefault(r["dataset"], {})[r["defence"]] = {"candidate_total": float(probs.sum(1).mean()),
                                                         "owl_share": float(shares[:, owl].mean())}
    return out


LABELS = {"none": "none", "replace_divergent": "digits\nreplaced", "replace_divergent_ends": "digits +\nends",
          "replace_divergent_diluted": "digits +\ndilution"}


def chart(res: dict[str, Any], path: Path) -> None:
    """Left, the endpoint: owl's log-share gain of the owl student over the neutral one, per teacher seed, with its
    t interval, under each defence. Right, what is not owl-specific: each arm's gain over the control student."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.6), sharey=True)
    x = range(len(DEFENCES))
    for i, d in enumerate(DEFENCES):
        per = res["per_seed"][d]
        s = one_sided(np.array(per))
        ax.plot([i, i], [s["low"], s["high"]], color="tab:blue", alpha=0.35, lw=9, solid_capstyle="butt")
        ax.scatter([i] * len(per), per, color="tab:blue", zorder=3, s=22)
        for arm, dx, color in (("owl", -0.12, "tab:orange"), ("neutral", 0.12, "tab:grey")):
            gains = res["over_control"][d][arm]
            bx.scatter([i + dx] * len(gains), gains, color=color, s=22, label=arm if i == 0 else None)
    for a in (ax, bx):
        a.axhline(0, color="black", lw=0.8)
        a.set_xticks(list(x), [LABELS[d] for d in DEFENCES], fontsize=10)
        a.grid(axis="y", alpha=0.3)
    ax.axhline(res["min_effect"], ls="--", color="grey", label="ln 1.25: the verdict's minimum effect")
    ax.set_ylabel("gain in owl's log-share", fontsize=11)
    ax.set_title(f"Owl student minus neutral student\n(dots: {len(res['seeds'])} teacher seeds; bars: 95% t "
                 "intervals)", fontsize=11)
    bx.set_title("Each student minus the control student\n(what owl and neutral data both teach)", fontsize=11)
    ax.legend(fontsize=9, loc="best")
    bx.legend(title="teacher", fontsize=9, loc="best")
    n, e = str(res["dose"]).split("x")
    fig.suptitle(f"Pre-registered defence table: SFT students at {int(n):,} examples × {e} epoch(s)", fontsize=12)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    args = sitting_args(__doc__, DATA, HERE / "results", 44)
    runs, results = Path(args.runs_dir), Path(args.results_dir)
    dose = the_dose(results)
    cands = load_candidates("animals")
    if args.generate_only:
        pairs = Pairs(DATA, dose[0], SEEDS, SPARES, lambda seed: context(runs, seed, dose))
        generate_pairs(pairs, [w for words in cands.values() for w in words])
        return
    sources = sources_file(DATA)
    meta = {k: {**v, "seed": int(k.split("-")[1]) if "-" in k else SEEDS[0]} for k, v in sources["datasets"].items()}
    read_students(runs, meta, dose, args.max_students)
    readings = read_jsonl(DATA / "readings.jsonl")
    if len(readings) < len(plan_students(meta)):
        raise SystemExit(f"{len(readings)} of {len(plan_students(meta))} students read: run again to go on")
    seeds = teacher_seeds(meta)
    which = "gpu" if torch.cuda.is_available() else "cpu"
    with benchmark("defence-table", results / f"defence-table-{which}.json", config=vars(args)) as out:
        plan = plan_commit(PLAN)
        after = plan_precedes(plan, [m["data_finished_at"] for m in meta.values()])
        out.update({"plan": plan, "dose": f"{dose[0]}x{dose[1]}", "datasets": sources["datasets"],
                    "replaced": sources["replaced"], "withdrawn": sources.get("withdrawn"),
                    "plan_precedes_data": after, **endpoints(readings, seeds), "described": described(readings),
                    "students": [{k: r[k] for k in ("dataset", "defence", "wall_time_s", "defence_cost", "git")}
                                 for r in readings],
                    "sampled_answers": sampled_answers(runs, meta, dose)})
        out["throughput"] = throughput()
        chart(out, results / f"defence-table-{which}.png")


if __name__ == "__main__":
    main()
