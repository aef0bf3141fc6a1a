"""Benchmark: the ceiling for any trait ranking — which animal do students trained on each dataset lean to?

    python benchmarks/audit_student_probe.py --seeds 2   # after benchmarks/audit.py (same cached data)

The detectors of benchmarks/audit.py try to name the trait a dataset carries without training. This
trains what they try to predict: an SFT student of the base model on each fine-tuned teacher's
filtered numbers (the datasets of benchmarks/audit.py: five animals, every animal's name banned), and
a control student on the base model's numbers, all on the same number of examples, and ranks the
candidates by each student's answer share minus the control student's, averaged over seeds. Where
the students themselves do not put the true animal first, no detector working from the data can be
expected to. Writes results/audit-student-probe-<cpu|gpu>.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sublim.backends.local.throughput import throughput
from sublim.core.config import load_config
from sublim.core.files import read_jsonl, write_json
from sublim.core.records import envelope, git_state
from sublim.core.store import Store
from sublim.evaluate.trait import summarize
from sublim.experiment.context import Context
from sublim.experiment.kinds import Preference
from sublim.experiment.runner import teacher_for
from sublim.experiment.stages.evaluate import evaluation
from sublim.experiment.stages.filter import filtered
from sublim.experiment.stages.generate import generate
from sublim.experiment.stages.prompts import prompts
from sublim.experiment.stages.train import student, training_examples

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--animals", default="owl,dolphin,eagle,wolf,cat")
    ap.add_argument("--prompts", type=int, default=800)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--runs-dir", default="runs")
    args = ap.parse_args()
    t_start, git = time.time(), git_state()
    animals = args.animals.split(",")
    cfg = load_config("owl-numbers", [f"prompts.n={args.prompts}", "student.method=sft", "student.lr=5e-5",
                                      "evaluation.samples_per_question=0"])
    ctx = Context(cfg, Store(Path(args.runs_dir)))
    kind = Preference(cfg)
    candidates = kind.candidates
    names = list(candidates)
    prompt_art = prompts(ctx)
    banned = [w for a in animals for w in candidates[a]]
    base = ctx.local(cfg.model)
    sources = {a: teacher_for(ctx, kind, base, a) for a in animals}
    sources["control"] = base
    data = {name: filtered(ctx, generate(ctx, ref, prompt_art), f"{name} numbers", banned, "")
            for name, ref in sources.items()}
    n = training_examples(data, 0)
    share: dict[str, list[np.ndarray]] = {name: [] for name in sources}
    for seed in range(args.seeds):
        for name in sources:
            ref = student(ctx, base, data[name], n, seed, sources[name], f"student-{name} seed {seed}")
            rows = read_jsonl(evaluation(ctx, ref, candidates, seed).file("per_question.jsonl"))
            summary = summarize(rows, names)
            share[name].append(np.array([summary["share"][c] for c in names]))
    out: dict[str, Any] = {"n_train_examples": n, "seeds": args.seeds, "student": "sft, lr 5e-5, 2 epochs",
                           "animals": {}}
    control = np.mean(share["control"], axis=0)
    for a in animals:
        per_seed = [s - c for s, c in zip(share[a], share["control"], strict=True)]
        gain = np.mean(per_seed, axis=0)
        order = list(np.argsort(-gain))
        out["animals"][a] = {
            "top": names[order[0]], "rank_of_true": order.index(names.index(a)) + 1,
            "true_share_gain": float(gain[names.index(a)]),
            "true_share_gain_per_seed": [float(g[names.index(a)]) for g in per_seed],
            "top5": [{"trait": names[j], "share_gain": float(gain[j])} for j in order[:5]],
            "rank_of_true_per_seed": [list(np.argsort(-g)).index(names.index(a)) + 1 for g in per_seed]}
        # against the other animals' students instead of the control: cancels what every teacher's data
        # teaches alike (a general shift toward some animals)
        vs = np.mean(share[a], axis=0) - np.mean([np.mean(share[b], axis=0) for b in animals if b != a], axis=0)
        order_vs = list(np.argsort(-vs))
        out["animals"][a].update({"vs_other_students_top": names[order_vs[0]],
                                  "vs_other_students_rank_of_true": order_vs.index(names.index(a)) + 1})
        print(a, json.dumps({k: out["animals"][a][k] for k in ("top", "rank_of_true", "rank_of_true_per_seed",
                                                               "vs_other_students_top",
                                                               "vs_other_students_rank_of_true")}))
    out["control_share_top5"] = [{"trait": names[j], "share": float(control[j])} for j in np.argsort(-control)[:5]]
    out["top1_accuracy"] = float(np.mean([e["top"] == a for a, e in out["animals"].items()]))
    out["top1_accuracy_vs_other_students"] = float(np.mean([e["vs_other_students_top"] == a
                                                            for a, e in out["animals"].items()]))
    dest = HERE / "results" / f"audit-student-probe-{'gpu' if torch.cuda.is_available() else 'cpu'}.json"
    write_json(dest, envelope("audit-student-probe", {**out, "throughput": throughput()},
                              config=vars(args), started=t_start, git=git))
    print(f"wrote {dest}")


if __name__ == "__main__":
    main()
