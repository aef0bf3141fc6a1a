"""Benchmark: the pre-registered dose-response of SFT students on owl, neutral and control data
(the plan: benchmarks/dose_response_plan.md).

    python benchmarks/dose_response.py --generate-only      # five datasets of 6,000 samples, written to
                                                            # benchmarks/data/dose-response/ to commit
    python benchmarks/dose_response.py                      # the twenty students, then the endpoints

Teacher seeds 30 and 31 (spares 32, 33), each with an owl and a neutral teacher, and the base model's own data; SFT
students of the base at 1k x 1, 1k x 3, 3k x 1 and 6k x 1 (examples x epochs). The work outlives a session: the
datasets are committed files (imported into the store by their hash), and each student's reading (its per-question
candidate shares) is appended to benchmarks/data/dose-response/readings.jsonl as soon as it is made, with the
commit that made it; a later run reads only the students not yet there (``--max-students`` bounds one sitting).
Once all twenty are read it writes benchmarks/results/dose-response-<cpu|gpu>.json and a PNG.
"""

from __future__ import annotations

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

from sublim.backends.local.throughput import throughput
from sublim.core.config import load_config
from sublim.core.files import read_jsonl
from sublim.core.records import benchmark, git_state
from sublim.core.store import Store
from sublim.evaluate.stats import mean_ci
from sublim.experiment.context import Context
from sublim.experiment.stages.evaluate import evaluation
from sublim.experiment.stages.train import student
from sublim.traits.preference import load_candidates

HERE = Path(__file__).resolve().parent
DATA = HERE / "data" / "dose-response"
PLAN = HERE / "dose_response_plan.md"
SEEDS, SPARES = [30, 31], [32, 33]
KEPT, PROMPTS = 6000, 24000
DOSES = [(1000, 1), (1000, 3), (3000, 1), (6000, 1)]
MIN_EFFECT = math.log(1.25)


def context(runs: Path, seed: int, epochs: int = 1) -> Context:
    sets = [f"prompts.n={PROMPTS}", f"generation.until_kept={KEPT}", f"teacher.seed={seed}", "student.method=sft",
            "student.lr=5e-5", f"student.epochs={epochs}", "evaluation.samples_per_question=0"]
    require_bf16_cpu(PLAN)  # the plan's amendment: bf16 on a CPU, as its data so far were made
    return Context(load_config("owl-numbers", [*sets, *BF16]), Store(runs))


def pairs(runs: Path) -> Pairs:
    return Pairs(DATA, KEPT, SEEDS, SPARES, lambda seed: context(runs, seed))


def imported(ctx: Context, name: str, meta: dict[str, Any]) -> Any:
    return import_dataset(ctx, DATA / f"{name}.jsonl", meta, f"dose {name}")


def plan_students(meta: dict[str, Any]) -> list[tuple[str, int, int]]:
    """(dataset, examples, epochs) of every student the plan names."""
    return [(name, n, e) for n, e in DOSES for name in meta]


def read_students(runs: Path, meta: dict[str, Any], budget: int) -> None:
    """Train and read up to ``budget`` students not yet in readings.jsonl, appending each as it is read."""
    path = DATA / "readings.jsonl"
    done = {(r["dataset"], r["examples"], r["epochs"]) for r in read_jsonl(path)} if path.exists() else set()
    cands = load_candidates("animals")
    for name, n, epochs in [s for s in plan_students(meta) if s not in done][:budget]:
        ctx = context(runs, SEEDS[0], epochs)
        base = ctx.local(ctx.cfg.model)
        t0 = time.time()
        trained = student(ctx, base, imported(ctx, name, meta[name]), n, 0, base, f"student {name} {n}x{epochs}")
        rows = read_jsonl(evaluation(ctx, trained, cands, 0).file("per_question.jsonl"))
        reading = {"dataset": name, "examples": n, "epochs": epochs, "student_seed": 0,
                   "wall_time_s": round(time.time() - t0, 1), "git": git_state(),
                   "shares": [[r["share"][c] for c in cands] for r in rows],
                   "probs": [[r["prob"][c] for c in cands] for r in rows]}
        with path.open("a") as f:
            f.write(json.dumps(reading) + "\n")
        print(f"student {name} {n}x{epochs}: {reading['wall_time_s']} s", flush=True)


def log_share(reading: dict[str, Any]) -> np.ndarray:
    """Each candidate's share averaged over questions, in logs."""
    return np.log(np.array(reading["shares"]).mean(0) + 1e-12)


def endpoints(meta: dict[str, Any], readings: list[dict[str, Any]]) -> dict[str, Any]:
    names = list(load_candidates("animals"))
    owl = names.index("owl")
    by = {(r["dataset"], r["examples"], r["epochs"]): log_share(r) for r in readings}
    seeds = teacher_seeds(meta)
    out: dict[str, Any] = {}
    for n, e in DOSES:
        gain = np.array([by[(f"owl-{s}", n, e)] - by[(f"neutral-{s}", n, e)] for s in seeds])  # seed x candidate
        per_seed = gain[:, owl]
        ci = mean_ci(per_seed)
        mean = gain.mean(0)
        rank = int((mean > mean[owl]).sum()) + 1
        out[f"{n}x{e}"] = {
            "owl_gain_over_neutral": {"per_seed": per_seed.tolist(), "mean": float(per_seed.mean()),
                                      "low": ci.low, "high": ci.high, "seeds": seeds},
            "owl_rank_of_20": rank, "top": names[int(mean.argmax())],
            "every_candidate": dict(zip(names, mean.round(4).tolist(), strict=True)),
            "over_control": {arm: [float(by[(f"{arm}-{s}", n, e)][owl] - by[("control", n, e)][owl]) for s in seeds]
                             for arm in ("owl", "neutral")},
            "clear": bool((per_seed > MIN_EFFECT).all() and rank == 1),
        }
    clear = [d for d in out if out[d]["clear"]]
    return {"by_dose": out, "smallest_clear_dose": clear[0] if clear else None, "min_effect": MIN_EFFECT}


def chart(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    doses = list(res["by_dose"])
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, d in enumerate(doses):
        g = res["by_dose"][d]["owl_gain_over_neutral"]
        ax.scatter([i] * len(g["per_seed"]), g["per_seed"], color="tab:blue", zorder=3)
        ax.plot([i, i], [g["low"], g["high"]], color="tab:blue", alpha=0.4, lw=6)
    ax.axhline(res["min_effect"], ls="--", color="grey", label="ln 1.25 (the verdict's minimum effect)")
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(range(len(doses)), [d.replace("x", " × ") for d in doses])
    ax.set_xlabel("SFT dose (examples × epochs)")
    ax.set_ylabel("owl log-share gain, owl student − neutral student")
    ax.set_title("Dose-response, pre-registered: dots are teacher seeds, bars 95% t intervals", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    args = sitting_args(__doc__, DATA, HERE / "results", 20)
    runs = Path(args.runs_dir)
    if args.generate_only:
        cands = load_candidates("animals")
        generate_pairs(pairs(runs), [w for words in cands.values() for w in words])
        return
    sources = sources_file(DATA)
    meta = sources["datasets"]
    read_students(runs, meta, args.max_students)
    readings = read_jsonl(DATA / "readings.jsonl")
    if len(readings) < len(plan_students(meta)):
        raise SystemExit(f"{len(readings)} of {len(plan_students(meta))} students read: run again to go on")
    which = "gpu" if torch.cuda.is_available() else "cpu"
    with benchmark("dose-response", Path(args.results_dir) / f"dose-response-{which}.json", config=vars(args)) as out:
        plan = plan_commit(PLAN)
        after = plan_precedes(plan, [m["data_finished_at"] for m in meta.values()])
        out.update({"plan": plan, "datasets": meta, "replaced": sources["replaced"], "plan_precedes_data": after,
                    **endpoints(meta, readings),
                    "students": [{k: r[k] for k in ("dataset", "examples", "epochs", "wall_time_s", "git")}
                                 for r in readings]})
        out["throughput"] = throughput()
        chart(out, Path(args.results_dir) / f"dose-response-{which}.png")


if __name__ == "__main__":
    main()
