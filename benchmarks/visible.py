"""Benchmark: the pre-registered search for a recipe under which owl students *say* owl (the plan:
benchmarks/visible_plan.md).

    python benchmarks/visible.py --generate-only      # six datasets of 2,000 samples (teacher seeds 50-52, an owl
                                                      # and a neutral teacher each), written to benchmarks/data/visible/
    python benchmarks/visible.py                      # the rungs in order, six students each, until one is visible

Every student is read as soon as it is trained (its sampled cloze continuations and sampled answers, matched to
the candidate they name, and each candidate's exact probability under both forms) and appended to
benchmarks/data/visible/readings.jsonl with its commit and machine, so the search outlives a session
(``--max-students`` bounds a sitting). Float32 on every machine, as the plan fixes. When a rung's six students are
read, its criteria are checked; the search stops at the first visible rung, or after the fourth, and writes
benchmarks/results/visible-<cpu|gpu>.json and a PNG.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from benchlib.committed_data import (
    Pairs,
    generate_pairs,
    import_dataset,
    plan_commit,
    plan_precedes,
    sitting_args,
    sources_file,
    teacher_seeds,
)

from sublim.backends import Backend, LocalBackend
from sublim.backends.local.throughput import throughput
from sublim.core.config import load_config
from sublim.core.files import read_jsonl
from sublim.core.records import benchmark, git_state
from sublim.core.store import Store, read_manifest
from sublim.evaluate.stats import wilson_interval
from sublim.evaluate.verdict import replicated_effect
from sublim.experiment.context import Context
from sublim.experiment.kinds import Preference
from sublim.experiment.runner import teacher_for
from sublim.experiment.stages.evaluate import cloze_evaluation, evaluation
from sublim.experiment.stages.train import student, teacher
from sublim.traits.preference import load_candidates

HERE = Path(__file__).resolve().parent
DATA = HERE / "data" / "visible"
PLAN = HERE / "visible_plan.md"
SEEDS, SPARES = [50, 51, 52], [53, 54, 55]
KEPT, PROMPTS = 2000, 10000
RUNGS = {"R1": ("distill_restricted", 1000, 2, 1e-4), "R2": ("distill_full", 1000, 2, 1e-4),
         "R3": ("distill_restricted", 2000, 3, 1e-4), "R4": ("sft", 2000, 3, 5e-5)}
SAMPLES = 10  # sampled answers per question, and continuations per cloze stem
MIN_RATE = 0.02
FORMS = ("cloze", "questions")


def context(runs: Path, seed: int, rung: str | None = None) -> Context:
    sets = [f"prompts.n={PROMPTS}", f"generation.until_kept={KEPT}", f"teacher.seed={seed}", "dtype=float32",
            f"evaluation.samples_per_question={SAMPLES}", f"evaluation.cloze_samples_per_question={SAMPLES}"]
    if rung is not None:
        method, _, epochs, lr = RUNGS[rung]
        sets += [f"student.method={method}", f"student.epochs={epochs}", f"student.lr={lr}"]
    return Context(load_config("owl-numbers", sets), Store(runs))


def pairs(runs: Path) -> Pairs:
    return Pairs(DATA, KEPT, SEEDS, SPARES, lambda seed: context(runs, seed))


def teacher_of(ctx: Context, base: Backend, kind: str, seed: int) -> Backend:
    """The seed's owl or neutral teacher, from the store (trained again where the store lost it)."""
    if kind == "owl":
        return teacher_for(ctx, Preference(ctx.cfg), base, "owl")
    return teacher(ctx, base, "neutral", *Preference(ctx.cfg).neutral_teacher_data(seed), seed=seed)


def compact(rows: list[dict[str, Any]], cands: list[str]) -> dict[str, Any]:
    return {"probs": [[r["prob"][c] for c in cands] for r in rows], "matched": [r["matched"] for r in rows]}


def read_one(runs: Path, rung: str, kind: str, seed: int, meta: dict[str, Any]) -> dict[str, Any]:
    """Train one student of the rung on the seed's ``kind`` data and read it."""
    ctx = context(runs, seed, rung)
    cands = load_candidates("animals")
    base = ctx.local(ctx.cfg.model)
    name = f"{kind}-{seed}"
    data = import_dataset(ctx, DATA / f"{name}.jsonl", meta[name], f"visible {name}")
    t0 = time.time()
    source = teacher_of(ctx, base, kind, seed) if ctx.cfg.student.method.startswith("distill") else base
    t1 = time.time()
    trained = student(ctx, base, data, RUNGS[rung][1], 0, source, f"student {name} {rung}")
    t2 = time.time()
    cloze = cloze_evaluation(ctx, trained, cands, 0)
    if cloze is None:
        raise SystemExit("the animal question set lost its cloze stems: the plan's primary form cannot be read")
    rows = {"questions": read_jsonl(evaluation(ctx, trained, cands, 0).file("per_question.jsonl")),
            "cloze": read_jsonl(cloze.file("per_question.jsonl"))}
    t3 = time.time()
    weights = trained.weights if isinstance(trained, LocalBackend) else None
    log = read_manifest(weights.parent).get("train_log", {}) if weights is not None else {}
    earlier = log.get("seconds_before_resume", 0.0)  # a training resumed from an earlier sitting's saved state
    return {"rung": rung, "dataset": name, "kind": kind, "seed": seed, "student_seed": 0,
            "teacher_s": round(t1 - t0, 1), "train_s": round(t2 - t1 + earlier, 1), "evaluate_s": round(t3 - t2, 1),
            "resumed_from_step": log.get("resumed_from_step"),
            "git": git_state(), "cpu_fast_bf16": fast_cpu(), "candidates": list(cands),
            **{form: compact(r, list(cands)) for form, r in rows.items()}}


def fast_cpu() -> bool:
    from sublim.train.precision import fast_bf16

    return fast_bf16("cpu")


def rows_of(reading: dict[str, Any], form: str) -> list[dict[str, Any]]:
    """A reading's compact form as the verdict's rows (prob, share, candidate total, matched)."""
    cands = reading["candidates"]
    out = []
    for probs, matched in zip(reading[form]["probs"], reading[form]["matched"], strict=True):
        total = float(sum(probs))
        out.append({"prob": dict(zip(cands, probs, strict=True)), "candidate_total": total, "matched": matched,
                    "share": {c: p / total if total > 0 else 0.0 for c, p in zip(cands, probs, strict=True)}})
    return out


def visibility(owl: list[dict[str, Any]], neutral: list[dict[str, Any]], form: str) -> dict[str, Any]:
    """The plan's three criteria on one form, for one rung's teacher pairs (owl[i] and neutral[i] share a seed)."""
    def named(r: dict[str, Any]) -> tuple[int, int]:
        flat = [m for ms in r[form]["matched"] for m in ms]
        return sum(m == "owl" for m in flat), len(flat)

    pairs_ = [(named(o), named(n)) for o, n in zip(owl, neutral, strict=True)]
    k_o, n_o = sum(p[0][0] for p in pairs_), sum(p[0][1] for p in pairs_)
    k_n, n_n = sum(p[1][0] for p in pairs_), sum(p[1][1] for p in pairs_)
    w_o, w_n = wilson_interval(k_o, n_o), wilson_interval(k_n, n_n)
    each = all(o[0] > n[0] for o, n in pairs_)
    apart = w_o.low > w_n.high
    rate = k_o / n_o if n_o else 0.0
    return {"per_pair": [{"owl": list(o), "neutral": list(n)} for o, n in pairs_],
            "owl": {"named": k_o, "of": n_o, **w_o.as_dict()}, "neutral": {"named": k_n, "of": n_n, **w_n.as_dict()},
            "every_pair_higher": each, "intervals_apart": apart, "rate_at_least": rate >= MIN_RATE,
            "visible": each and apart and rate >= MIN_RATE}


def rung_result(readings: list[dict[str, Any]], rung: str, seeds: list[int], meta: dict[str, Any]) -> dict[str, Any]:
    by = {(r["kind"], r["seed"]): r for r in readings if r["rung"] == rung}
    owl, neutral = [by[("owl", s)] for s in seeds], [by[("neutral", s)] for s in seeds]
    out: dict[str, Any] = {"recipe": dict(zip(("method", "samples", "epochs", "lr"), RUNGS[rung], strict=True))}
    for form in FORMS:
        eff = replicated_effect([rows_of(r, form) for r in owl], [rows_of(r, form) for r in neutral], len(seeds),
                                "owl", "neutral", 0.223)
        out[form] = {**visibility(owl, neutral, form), "verdict": eff["verdict"],
                     **{k: eff[k] for k in ("log_share_gain", "log_candidate_total_gain")}}
    n = RUNGS[rung][1]
    generation = sum(meta[r["dataset"]].get("generate_s", float("nan")) * n / meta[r["dataset"]]["kept"]
                     for r in owl + neutral)
    teachers = sum(meta[r["dataset"]].get("teacher_s", float("nan")) for r in owl + neutral)
    students = sum(r["train_s"] + r["evaluate_s"] for r in owl + neutral)
    total = teachers + generation + students
    out["cost_s"] = {"teachers": round(teachers, 1), "generation_prorated": round(generation, 1),
                     "students_and_evaluations": round(students, 1), "total": round(total, 1)}
    return out


def search(runs: Path, meta: dict[str, Any], budget: int) -> list[dict[str, Any]]:
    """Read the rungs' students in order, up to ``budget`` new ones, stopping after the first visible rung."""
    path = DATA / "readings.jsonl"
    readings = read_jsonl(path) if path.exists() else []
    seeds = teacher_seeds(meta)
    for rung in RUNGS:
        for seed in seeds:
            for kind in ("owl", "neutral"):
                if any(r["rung"] == rung and r["dataset"] == f"{kind}-{seed}" for r in readings):
                    continue
                if budget <= 0:
                    return readings
                reading = read_one(runs, rung, kind, seed, meta)
                with path.open("a") as f:
                    f.write(json.dumps(reading) + "\n")
                readings.append(reading)
                budget -= 1
                print(f"{rung} {kind}-{seed}: train {reading['train_s']} s, evaluate {reading['evaluate_s']} s",
                      flush=True)
        if rung_result(readings, rung, seeds, meta)["cloze"]["visible"]:
            break
    return readings


def stage_seconds(runs: Path, meta: dict[str, Any]) -> None:
    """Each dataset's teacher and generation seconds, from the store's manifests (recorded in sources.json)."""
    store = Store(runs)
    for m in meta.values():
        if "generate_s" in m:
            continue
        filt = store.get("filter", m["artifact"])
        gen = store.get("generate", filt.manifest["inputs"]["generation"]) if filt else None
        if gen is None:
            continue
        m["generate_s"] = gen.manifest["wall_time_s"]
        src = gen.manifest["inputs"].get("model")
        tr = store.get("teacher", src) if src else None
        m["teacher_s"] = tr.manifest["wall_time_s"] if tr else 0.0


def chart(out: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rungs = list(out["rungs"])
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8), sharey=True)
    for ax, form in zip(axes, FORMS, strict=True):
        for i, rung in enumerate(rungs):
            for j, arm in enumerate(("owl", "neutral")):
                v = out["rungs"][rung][form][arm]
                x = i + (j - 0.5) * 0.3
                ax.bar(x, 100 * v["value"], 0.28, color="tab:orange" if arm == "owl" else "tab:grey",
                       label=f"{arm} students" if i == 0 else None)
                ax.plot([x, x], [100 * v["low"], 100 * v["high"]], color="black", lw=1)
        ax.axhline(100 * MIN_RATE, ls="--", color="grey", lw=0.8)
        ax.set_xticks(range(len(rungs)), rungs)
        ax.set_title(f"{form}: answers naming owl (3 students per bar)", fontsize=9)
    axes[0].set_ylabel("% of sampled answers (95% Wilson)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    args = sitting_args(__doc__, DATA, HERE / "results", 24)
    runs = Path(args.runs_dir)
    if args.generate_only:
        cands = load_candidates("animals")
        generate_pairs(pairs(runs), [w for words in cands.values() for w in words], control=False)
        state = sources_file(DATA)
        stage_seconds(runs, state["datasets"])
        (DATA / "sources.json").write_text(json.dumps(state, indent=1) + "\n")
        return
    sources = sources_file(DATA)
    meta = sources["datasets"]
    readings = search(runs, meta, args.max_students)
    seeds = teacher_seeds(meta)
    done = [g for g in RUNGS if sum(r["rung"] == g for r in readings) == 2 * len(seeds)]
    last_visible = bool(done) and rung_result(readings, done[-1], seeds, meta)["cloze"]["visible"]
    finished = len(done) == len(RUNGS) or last_visible
    if not finished:
        raise SystemExit(f"{len(readings)} students read ({', '.join(done) or 'no rung'} complete): run again to go on")
    which = "gpu" if torch.cuda.is_available() else "cpu"
    with benchmark("visible", Path(args.results_dir) / f"visible-{which}.json", config=vars(args)) as out:
        plan = plan_commit(PLAN)
        rungs = {g: rung_result(readings, g, seeds, meta) for g in done}
        first = [g for g in done if rungs[g]["cloze"]["visible"]]
        out.update({"plan": plan, "datasets": meta, "replaced": sources["replaced"],
                    "plan_precedes_data": plan_precedes(plan, [m["data_finished_at"] for m in meta.values()]),
                    "teacher_seeds": seeds, "rungs": rungs, "visible_rung": first[0] if first else None,
                    "students": [{k: r[k] for k in ("rung", "dataset", "train_s", "evaluate_s", "git", "cpu_fast_bf16")}
                                 for r in readings],
                    "mean_question_candidate_total": float(np.mean([np.sum(r["questions"]["probs"], 1).mean()
                                                                    for r in readings]))})
        out["throughput"] = throughput()
        chart(out, Path(args.results_dir) / f"visible-{which}.png")


if __name__ == "__main__":
    main()
