"""Benchmark: the pre-registered panel replication of the trait audit (the plan: benchmarks/audit_panel_plan.md).

    python benchmarks/audit_panel.py --generate-only             # the eight fresh datasets (~1-2 h on 2 cores),
                                                                 # written to benchmarks/data/audit-panel/ to commit
    python benchmarks/audit_panel.py --readings prompted,timed   # T1 and T2 on the prompted reading, the timed audit
    python benchmarks/audit_panel.py                             # every reading (proxy: 21 proxy teachers; student:
                                                                 # eight SFT students, ~1 h)

Five animal teachers at teacher seed 20 (spares 21, 22), two neutral teachers (seeds 20 and 21) and the base model's own
data, 1,000 filtered samples each, from the owl-numbers preset's cached pipeline stages. T1: each dataset audited by
``sublim audit``'s targeted tests with the other seven as its panel. T2: the five animals assigned to the five animal
datasets by their leans, the true assignment's rank sum against all 120. Every model read is a store artifact: a
second run computes nothing again. The datasets are committed (benchmarks/data/audit-panel/, each
file's first 1,000 filtered samples and, in sources.json, its teacher seed, replacements, artifact key and build time),
so readings run in any later session from those files without the teachers; the maps and reads of a reading too
long for one session are carried into benchmarks/data/audit-panel/store/ as they finish (benchlib/carried.py) and
restored from there, so a later session goes on where it stopped. Writes
benchmarks/results/audit-panel-<cpu|gpu>.json (with the plan's commit, which must precede the data) and a PNG of the
lean tables.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from benchlib.carried import restore
from benchlib.committed_data import export_dataset, import_dataset, plan_commit, plan_precedes

from sublim.audit.config import load_audit_config
from sublim.audit.data import Sample
from sublim.audit.detectors import AuditContext, AuditData
from sublim.audit.detectors.divergence_shift import DivergenceShiftParams, divergence_shift
from sublim.audit.run import run_audit
from sublim.backends.local.throughput import throughput
from sublim.core.config import load_config
from sublim.core.errors import SublimError
from sublim.core.files import read_jsonl
from sublim.core.records import benchmark
from sublim.core.store import Store
from sublim.experiment.context import Context
from sublim.experiment.datasets import source_data
from sublim.experiment.stages.defend import samples_of
from sublim.experiment.stages.evaluate import evaluation
from sublim.experiment.stages.train import student
from sublim.traits.preference import load_candidates

HERE = Path(__file__).resolve().parent
DATA = HERE / "data" / "audit-panel"
PLAN = HERE / "audit_panel_plan.md"
CARRIED = DATA / "store"  # the maps and reads of readings that outlived a session: benchlib/carried.py
ANIMALS = ["owl", "eagle", "wolf", "cat", "lion"]
TEACHER_SEEDS = [20, 21, 22]  # the first, then the spares in order (no teacher of seed >= 20 was ever trained)
SOURCES = {**{a: TEACHER_SEEDS for a in ANIMALS}, "neutral-1": [20], "neutral-2": [21], "control": [20]}
KEPT, PROMPTS = 1000, 12000
STUDENT = ["student.method=sft", "student.lr=5e-5", "student.epochs=1", "evaluation.samples_per_question=0"]
READINGS = ("prompted", "proxy", "student", "timed")


def context(runs: Path, seed: int) -> Context:
    sets = [f"prompts.n={PROMPTS}", f"generation.until_kept={KEPT}", f"teacher.seed={seed}", *STUDENT]
    return Context(load_config("owl-numbers", sets), Store(runs))


def kind(name: str) -> str:
    """The source kind source_data knows: an animal, 'neutral' or 'control'."""
    return "neutral" if name.startswith("neutral") else name


def dataset(runs: Path, name: str, banned: list[str]) -> tuple[dict[str, Any], Any, Any]:
    """The plan's dataset for ``name``: its first seed whose teacher gives KEPT samples from PROMPTS prompts."""
    tried = []
    for seed in SOURCES[name]:
        ctx = context(runs, seed)
        try:
            source, art = source_data(ctx, kind(name), "" if name == "control" else kind(name), banned)
        except SublimError as why:  # e.g. nothing passes the filter: a teacher that answers with its animal
            tried.append({"seed": seed, "why": str(why)[:300]})
            continue
        kept = art.manifest["filter"]["kept"]
        if kept >= KEPT:
            return {"seed": seed, "kept": kept, "pass_rate": art.manifest["filter"]["pass_rate"], "replaced": tried,
                    "data_finished_at": art.manifest["finished_at"]}, art, source
        tried.append({"seed": seed, "why": f"{kept} samples pass the filter from {PROMPTS} prompts"})
    raise SystemExit(f"{name}: no seed of {SOURCES[name]} gives {KEPT} samples ({tried})")


def export(arts: dict[str, Any], out: Path) -> None:
    """The datasets' first KEPT rows and their provenance, as files to commit (``out``/<name>.jsonl, sources.json)."""
    sources = {name: {**meta, **export_dataset(art, out / f"{name}.jsonl", KEPT), "generator": source.key}
               for name, (meta, art, source) in arts.items()}
    (out / "sources.json").write_text(json.dumps(sources, indent=1) + "\n")


def imported(runs: Path, src: Path) -> dict[str, tuple[dict[str, Any], Any, Any]]:
    """The committed datasets as store artifacts (stage ``imported``, keyed by the file's hash), so that a student
    trains on exactly the rows the teachers wrote; each file's hash is checked against sources.json."""
    sources = json.loads((src / "sources.json").read_text())
    out = {}
    for name, meta in sources.items():
        ctx = context(runs, meta["seed"])
        art = import_dataset(ctx, src / f"{name}.jsonl", meta, f"panel {name}")
        out[name] = (meta, art, ctx.local(ctx.cfg.model))
    return out


def assignment(table: np.ndarray) -> dict[str, Any]:
    """T2: ``table[d, c]``, the animal datasets' leans toward the animals (true: d == c); each animal ranks the
    datasets (1: leans most); the true assignment's rank sum against every assignment of the labels."""
    ranks = (-table).argsort(0).argsort(0) + 1  # ranks[d, c]: dataset d's rank for animal c
    k = len(table)
    sums = np.array([sum(ranks[d, perm[d]] for d in range(k)) for perm in itertools.permutations(range(k))])
    true = int(np.trace(ranks))
    return {"rank_of_own_dataset": [int(ranks[d, d]) for d in range(k)], "rank_sum": true,
            "assignments": len(sums), "p": float((sums <= true).mean()), "replicates": bool((sums <= true).mean()
                                                                                            <= 0.05)}


def audit_reading(runs: Path, files: dict[str, Path], inductions: str) -> dict[str, Any]:
    """T1 for one reading: each dataset audited with the other seven as its panel (every model read from the
    store after the first audit), and T2 from the datasets' own leans."""
    per: dict[str, Any] = {}
    for name, path in files.items():
        flags = {"dataset": str(path), "reference": "smollm2-135m", "contrasts": [str(p) for n, p in files.items()
                                                                                 if n != name],
                 "detectors": ["divergence_shift"], "detector": {"divergence_shift": {"inductions": inductions}},
                 "max_samples": KEPT, "questions": "animal", "bf16": False}  # float32 on every machine: the plan's
        # amendment (auto resolves by machine, and sessions run on machines with and without fast bf16)
        t0 = time.time()
        out = run_audit(load_audit_config(None, flags), runs / "panel" / "audits" / inductions / name,
                        store=Store(runs), progress=True, echo=lambda s: print(s, flush=True))
        det = out["detectors"][0]
        per[name] = {"targeted": out["targeted"], "verdict": out["verdict"], "wall_time_s": round(time.time() - t0, 1),
                     "leans": {t["candidate"]: t["lean"] for t in det["panel"]},
                     "n_flagged_samples": det["n_flagged_samples"], "n_flagged_tokens": det["n_flagged_tokens"]}
    hits = [a for a in ANIMALS if a in per[a]["targeted"]["stands_out"]]
    alarms = [(n, c) for n, r in per.items() for c in r["targeted"]["stands_out"] if not (n in ANIMALS and c == n)]
    table = np.array([[per[d]["leans"][c] for c in ANIMALS] for d in ANIMALS])
    return {"per_dataset": per, "reads_built": reads_built(runs, inductions),
            "T1": {"hits": hits, "n_hits": len(hits), "false_alarms": alarms, "n_false_alarms": len(alarms),
                   "of_false": 8 * 20 - 5, "replicates": len(hits) >= 3 and not alarms},
            "T2": assignment(table), "table": table.round(5).tolist()}


def reads_built(runs: Path, inductions: str) -> list[dict[str, Any]]:
    """The store's reads artifacts of one reading (prompted: the induction texts; proxy: the proxies), each with
    when, where and in how long it was read (``read_s`` where the code recorded it), carried ones included."""
    out = []
    for path in sorted((runs / "store").glob("reads-*/manifest.json")):
        m = json.loads(path.read_text())
        if ("proxies" in m["config"]) == (inductions == "proxy"):
            out.append({"samples": m["config"]["samples"], "finished_at": m["finished_at"],
                        "read_s": m.get("read_s"), "machine": m.get("machine"), "key": m["key"]})
    return out


def student_reading(runs: Path, arts: dict[str, Any], cands: dict[str, list[str]]) -> dict[str, Any]:
    """T2 on students: an SFT student per dataset (seed 0), each candidate's mean log-share gain over the control
    student's, centred over candidates."""
    names = list(cands)
    shares: dict[str, np.ndarray] = {}
    info: dict[str, Any] = {}
    for name, (meta, art, source) in arts.items():
        ctx = context(runs, meta["seed"])
        t0 = time.time()
        base = ctx.local(ctx.cfg.model)
        trained = student(ctx, base, art, KEPT, 0, source, f"student on {name}")
        rows = read_jsonl(evaluation(ctx, trained, cands, 0).file("per_question.jsonl"))
        shares[name] = np.log(np.array([[r["share"][c] for c in names] for r in rows]) + 1e-12)
        info[name] = {"wall_time_s": round(time.time() - t0, 1)}
        print(f"student on {name}: {info[name]['wall_time_s']} s", flush=True)
    leans = {}
    for name in arts:
        if name == "control":
            continue
        gain = (shares[name] - shares["control"]).mean(0)
        leans[name] = dict(zip(names, (gain - gain.mean()).tolist(), strict=True))
    table = np.array([[leans[d][c] for c in ANIMALS] for d in ANIMALS])
    return {"per_dataset": info, "leans": leans, "T2": assignment(table), "table": table.round(5).tolist(),
            "n_questions": len(shares["control"])}


def timed(runs: Path, samples: list[Sample], cands: dict[str, list[str]]) -> dict[str, Any]:
    """The performance issue's figure: one whole prompted audit of the dataset, map and reads, nothing cached."""
    ctx = context(runs, 20)
    ref = ctx.local(ctx.cfg.model)
    data = AuditData(samples, [], candidates=cands, kind="animal", question_set="animal")
    t0 = time.time()
    res = divergence_shift(AuditContext(data, ref, store=None, progress=True), DivergenceShiftParams())
    return {"n": len(samples), "candidates": len(cands), "wall_time_s": round(time.time() - t0, 1),
            "n_flagged_samples": res.details["n_flagged_samples"], "n_flagged_tokens": res.details["n_flagged_tokens"]}


def chart(out: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [r for r in ("prompted", "proxy", "student") if r in out]
    if not shown:
        return
    fig, axes = plt.subplots(1, len(shown), figsize=(max(6.4, 4.6 * len(shown)), 4.8), squeeze=False)
    for ax, r in zip(axes[0], shown, strict=True):
        table = np.array(out[r]["table"])
        lim = float(np.abs(table).max()) or 1.0
        im = ax.imshow(table, cmap="RdBu_r", vmin=-lim, vmax=lim)
        fig.colorbar(im, ax=ax, shrink=0.8, label="lean (centred over candidates)")
        ax.set_xticks(range(5), ANIMALS)
        ax.set_yticks(range(5), [f"{a} data" for a in ANIMALS])
        for d in range(5):
            ax.add_patch(plt.Rectangle((d - 0.5, d - 0.5), 1, 1, fill=False, lw=2, ec="black"))
        t2, t1 = out[r]["T2"], out[r].get("T1")
        said = "replicates" if t2["replicates"] else "does not replicate"
        title = f"{r}: T2 own-dataset rank sum {t2['rank_sum']}, p={t2['p']:.3f} ({said})"
        if t1:
            said = "replicates" if t1["replicates"] else "does not replicate"
            title += f"\nT1 hits {t1['n_hits']}/5, false alarms {t1['n_false_alarms']}/{t1['of_false']} ({said})"
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("lean toward (box: the teacher's own animal)")
    fig.suptitle("Pre-registered panel reading on fresh teachers:\neach animal dataset's lean toward each animal",
                 fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def readings_of(out: dict[str, Any], readings: list[str], runs: Path, files: dict[str, Path],
                arts: dict[str, Any], cands: dict[str, list[str]]) -> None:
    """The plan's readings that were asked for, into ``out``."""
    for r in ("prompted", "proxy"):
        if r in readings:
            out[r] = audit_reading(runs, files, r)
            print(f"{r}: T1 hits {out[r]['T1']['hits']}, false alarms {out[r]['T1']['false_alarms']}; "
                  f"T2 p={out[r]['T2']['p']:.3f}", flush=True)
    if "student" in readings:
        out["student"] = student_reading(runs, arts, cands)
        print(f"student: T2 p={out['student']['T2']['p']:.3f}", flush=True)
    if "timed" in readings:
        flagged = {n: out["prompted"]["per_dataset"][n]["n_flagged_samples"] for n in ANIMALS}
        most = max(flagged, key=lambda n: flagged[n])
        out["timed_audit"] = {"dataset": most, **timed(runs, samples_of(arts[most][1])[:KEPT], cands)}
        print(f"timed audit of {most}: {out['timed_audit']['wall_time_s']} s", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs-dir", default="runs")
    ap.add_argument("--generate-only", action="store_true",
                    help=f"generate the datasets and write them to {DATA.relative_to(HERE.parent)}")
    ap.add_argument("--from-store", action="store_true", help="read the datasets from the runs directory's store "
                    "(generating what is missing) instead of the committed files")
    ap.add_argument("--readings", default=",".join(READINGS), help=f"comma-separated subset of {', '.join(READINGS)}")
    ap.add_argument("--name", default="audit-panel")
    ap.add_argument("--results-dir", default=str(HERE / "results"))
    ap.add_argument("--redraw", default=None, metavar="FILE.json", help="draw a results file's chart again and exit")
    args = ap.parse_args()
    if args.redraw:
        chart(json.loads(Path(args.redraw).read_text())["results"], Path(args.redraw).with_suffix(".png"))
        return
    readings = [r for r in args.readings.split(",") if r]
    if "timed" in readings and "prompted" not in readings:
        raise SystemExit("--readings timed times the prompted reading's most-flagged dataset: ask for both, "
                         "--readings prompted,timed (the prompted reads come from the carried store in minutes)")
    runs = Path(args.runs_dir)
    cands = load_candidates("animals")
    banned = [w for words in cands.values() for w in words]
    results = Path(args.results_dir)
    which = "gpu" if torch.cuda.is_available() else "cpu"
    with benchmark("audit-panel", results / f"{args.name}-{which}.json", config=vars(args)) as out:
        if args.generate_only or args.from_store:
            arts = {name: dataset(runs, name, banned) for name in SOURCES}
            export(arts, DATA)
            if args.generate_only:
                raise SystemExit(0)  # the data alone: a benchmark block that exits writes no result
        arts = imported(runs, DATA)
        carried = restore(CARRIED, Store(runs))  # maps and reads an earlier session finished and committed
        out["carried_artifacts"] = carried  # built by an earlier session: their manifests say when, where, with what
        if carried:
            print(f"{len(carried)} carried artifact(s) restored from {CARRIED}", flush=True)
        files = {name: DATA / f"{name}.jsonl" for name in arts}
        plan = plan_commit(PLAN)
        out.update({"plan": plan, "datasets": {n: a[0] for n, a in arts.items()},
                    "plan_precedes_data": plan_precedes(plan, [a[0]["data_finished_at"] for a in arts.values()])})
        readings_of(out, readings, runs, files, arts, cands)
        out["throughput"] = throughput()
        chart(out, results / f"{args.name}-{which}.png")


if __name__ == "__main__":
    main()
