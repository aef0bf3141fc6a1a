"""Benchmark: how well the audit detectors find a hidden trait, and what the defences cost.

    python benchmarks/audit.py                                   # 5 animals, 800 prompts, CPU-sized
    python benchmarks/audit.py --prompts 6000 --sizes 100,1000   # bigger sets (the n = 1,000 figure of the
                                                                 # Done-when: audit_dataset_level.py)
    python benchmarks/audit.py --defences none                   # detectors only (keeps an earlier defence table)

Data come from the pipeline (fine-tuned teachers, greedy decoding, the strict number filter; the
stages are cached in --runs-dir). Prompts are split in two halves: the base model's answers to
the first half are the detectors' reference sample; each teacher's and the base model's answers
to the second half are the audited datasets (positives and negatives). Writes
benchmarks/results/<name>.json and a ROC chart. Not a test: it trains real models.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sublim.api import run_experiment
from sublim.audit.data import Sample
from sublim.audit.detectors import (
    TRAIT_TEMPLATE,
    BagOfNumbers,
    GradientAlignment,
    InContext,
    LikelihoodShift,
    NumberFrequency,
)
from sublim.audit.detectors.gradient_alignment import gradient_scorer
from sublim.audit.detectors.in_context import share_probe
from sublim.audit.detectors.likelihood_shift import logprob_fn
from sublim.audit.scoring import auroc, crossfit_frequency, dataset_level, rank_of
from sublim.backends.local.throughput import throughput
from sublim.core.config import load_config
from sublim.core.files import write_json
from sublim.core.records import envelope, git_state
from sublim.core.store import Store
from sublim.experiment.context import Context
from sublim.experiment.datasets import teacher_datasets
from sublim.traits.preference import load_candidates, load_questions

HERE = Path(__file__).resolve().parent


def trait_of(name: str) -> str:
    return name.removesuffix("-system")


def gradient_part(out: dict[str, Any], half: dict[str, tuple[list[Sample], list[Sample]]], animals: list[str],
                  audited: list[str], grad: GradientAlignment, leans: Any) -> None:
    """Gradient-alignment ranking of every audited dataset (all its samples, chunks of 8), against the base
    model's answers and against the other fine-tuned teachers' data; written into ``out``."""
    ref, neg = half["control"]
    grad.ref_leans = leans("reference", ref, grad)
    res_neg = grad.score(neg, leans("negative", neg, grad))
    raw = {a: leans(a, half[a][1], grad) for a in audited}
    out["negative_gradient_top"], out["negative_gradient_p"] = res_neg.details["top_trait"], res_neg.p_value
    for src in audited:
        a, pos = trait_of(src), half[src][1]
        res = grad.score(pos, raw[src])
        vs = grad.score(pos, raw[src], contrast=np.vstack([raw[b] for b in animals if b != a]))
        out["animals"].setdefault(src, {"trait": a}).update({
            "gradient_top": res.details["top_trait"], "gradient_rank_of_true": rank_of(res, a),
            "gradient_p": res.p_value, "gradient_ranking": res.details["ranking"][:5],
            "gradient_vs_other_teachers_top": vs.details["top_trait"],
            "gradient_vs_other_teachers_rank_of_true": rank_of(vs, a), "gradient_vs_other_teachers_p": vs.p_value})
        print(f"gradient alignment {src}: top {res.details['top_trait']} (rank of {a}: {rank_of(res, a)}, "
              f"p {res.p_value:.2g}); vs other teachers: {vs.details['top_trait']} ({rank_of(vs, a)})", flush=True)
    fine = [out["animals"][a] for a in animals]
    out["gradient_top1_accuracy"] = float(np.mean([e["gradient_top"] == e["trait"] for e in fine]))
    out["gradient_top1_accuracy_vs_other_teachers"] = float(np.mean(
        [e["gradient_vs_other_teachers_top"] == e["trait"] for e in fine]))
    out["gradient_chunk"] = grad.chunk


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--animals", default="owl,dolphin,eagle,wolf,cat")
    ap.add_argument("--system-prompted", default="owl",
                    help="animals whose system-prompted teacher's data are audited too ('' for none)")
    ap.add_argument("--prompts", type=int, default=800)
    ap.add_argument("--sizes", default="50,100,1000")
    ap.add_argument("--subsets", type=int, default=20)
    ap.add_argument("--defences", default="sort,remap,shuffle,drop_top,regenerate")
    ap.add_argument("--seeds", type=int, default=3, help="training seeds per arm in the defence table")
    ap.add_argument("--student", default="sft", choices=list(STUDENTS), help="how the defence table's students learn")
    ap.add_argument("--only-defences", action="store_true",
                    help="keep the detector figures of an earlier run's JSON and (re)measure the defence table")
    ap.add_argument("--only-gradient", action="store_true",
                    help="keep an earlier run's JSON and (re)measure the gradient-alignment ranking")
    ap.add_argument("--shift-samples", type=int, default=1000,
                    help="samples per dataset for the likelihood scan (its cost: 20 model passes per sample)")
    ap.add_argument("--runs-dir", default="runs")
    ap.add_argument("--name", default=None)
    args = ap.parse_args()
    t_start, git = time.time(), git_state()
    name = args.name or f"audit-{'gpu' if torch.cuda.is_available() else 'cpu'}"
    dest = HERE / "results" / f"{name}.json"

    def save(results: dict[str, Any]) -> None:
        write_json(dest, envelope("audit", {**results, "throughput": throughput()},
                                  config=vars(args), started=t_start, git=git))

    def earlier() -> dict[str, Any]:
        """An earlier run's results, each part keeping the commit it was measured at."""
        old = json.loads(dest.read_text())
        res: dict[str, Any] = old["results"]
        res.setdefault("measured_at", {"all": old["git"]})
        return res

    if args.only_defences:
        if not dest.exists():
            raise SystemExit(f"--only-defences needs an earlier {dest}: run without it first")
        res = earlier()
        res["defences"] = defence_table(args)
        res["measured_at"]["defences"] = git
        save(res)
        print(f"wrote {dest} (defences)")
        return
    if args.only_gradient and not dest.exists():
        raise SystemExit(f"--only-gradient needs an earlier {dest}: run without it first")
    animals = args.animals.split(",")
    cfg = load_config("owl-numbers", [f"prompts.n={args.prompts}"])
    ctx = Context(cfg, Store(Path(args.runs_dir)))
    candidates = load_candidates(cfg.trait.category)
    system_prompted = [a for a in args.system_prompted.split(",") if a]
    data = teacher_datasets(ctx, animals, system_prompted)
    audited = [*animals, *(f"{a}-system" for a in system_prompted)]
    half = {k: ([s for s in v if s.line % 2 == 0], [s for s in v if s.line % 2 == 1]) for k, v in data.items()}
    ref, neg = half["control"]
    base = ctx.local(cfg.model)
    lp = logprob_fn(base, True, "log-probs")
    names = list(candidates)
    cap = args.shift_samples  # the scan costs (candidates + 1) model passes per sample
    cache = Path(args.runs_dir) / "audit-bench"
    cache.mkdir(parents=True, exist_ok=True)
    shift = LikelihoodShift(lp, names, TRAIT_TEMPLATE, None)

    grad = GradientAlignment(gradient_scorer(base, candidates, load_questions(cfg.trait.questions, "eval"), True),
                             names)

    def leans(key: str, samples: list[Sample], det: Any = shift) -> np.ndarray:
        """A ranking detector's leans, kept on disk: re-running the benchmark never repeats the model passes."""
        digest = hashlib.sha256("\n".join(s.prompt + "\0" + s.completion for s in samples).encode()).hexdigest()
        f = cache / f"{'leans' if det is shift else det.name}-{key}-{len(samples)}-{digest[:16]}.npy"
        if f.exists():
            return np.load(f)
        arr = det.lean(samples)
        np.save(f, arr)
        return arr

    if args.only_gradient:
        res = earlier()
        t0 = time.time()
        gradient_part(res, half, animals, audited, grad, leans)
        res["gradient_wall_time_s"] = round(time.time() - t0, 1)
        res["measured_at"]["gradient"] = git
        rank_chart(res, dest.with_name(f"{dest.stem}-ranking.png"))
        save(res)
        print(f"wrote {dest} (gradient alignment)")
        return

    shift.ref_leans = leans("reference", ref[:cap])
    neg_raw = leans("negative", neg[:cap])
    pos_raw = {a: leans(a, half[a][1][:cap]) for a in audited}
    neg_lean = neg_raw - shift.ref_leans.mean(0)
    probe = share_probe(base, candidates)
    in_ctx = InContext(probe, names, "animal", ref)
    out: dict[str, Any] = {"animals": {}, "n_reference": len(ref), "n_negative": len(neg), "prompts": args.prompts,
                           "likelihood_scan_samples_per_dataset": cap,
                           "negative_ranking_top": shift.score(neg[:cap], neg_raw).details["top_trait"]}
    roc: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for src in audited:
        a = trait_of(src)
        pos = half[src][1]
        t0 = time.time()
        raw = pos_raw[src]
        res_shift = shift.score(pos[:cap], raw)
        # against the other generators' data: the fine-tuned teachers of the other animals
        others = np.vstack([pos_raw[b] for b in animals if b != a])
        res_contrast = shift.score(pos[:cap], raw, contrast=others)
        pos_lean_all = raw - shift.ref_leans.mean(0)
        j = names.index(a)
        freq = NumberFrequency(ref)
        f_pos, f_neg = freq.score(pos), freq.score(neg)
        f_cross = crossfit_frequency(freq, pos, neg)
        bag = BagOfNumbers(ref)
        b_pos, b_neg = bag.score(pos), bag.score(neg)
        ic = in_ctx.score(pos)

        entry: dict[str, Any] = {
            "trait": a, "teacher": "system prompt" if src.endswith("-system") else "fine-tuned",
            "n_positive": len(pos), "pass_rate": len(data[src]) / args.prompts,
            # sample level: each detector's per-sample score, positives vs negatives on one scale (number
            # frequency cross-fitted over prompts);
            # bag-of-numbers: its own cross-validated AUROC of the dataset's samples vs the reference's
            # (the negatives' figure beside it is the same classifier's score for control samples: ~0.5)
            "sample_auroc": {"number_frequency": auroc(*f_cross),
                             "bag_of_numbers": b_pos.statistic,
                             "likelihood_shift": auroc(pos_lean_all[:, j], neg_lean[:, j])},
            "sample_auroc_negatives_vs_reference": {"bag_of_numbers": b_neg.statistic},
            "dataset_p": {"number_frequency": f_pos.p_value, "bag_of_numbers": b_pos.p_value,
                          "likelihood_shift": res_shift.p_value, "likelihood_shift_vs_other_teachers":
                          res_contrast.p_value, "in_context": ic.p_value},
            "negative_p": {"number_frequency": f_neg.p_value, "bag_of_numbers": b_neg.p_value},
            "ranking_top": res_shift.details["top_trait"], "ranking_rank_of_true": rank_of(res_shift, a),
            "ranking_vs_other_teachers_top": res_contrast.details["top_trait"],
            "ranking_vs_other_teachers_rank_of_true": rank_of(res_contrast, a),
            "ranking_vs_other_teachers": res_contrast.details["ranking"][:5],
            "in_context_top": ic.details["top_trait"],
            "dataset_auroc": {},
        }
        for n in [int(x) for x in args.sizes.split(",")]:
            # subsets drawn from fewer than 2n samples overlap so much that their AUROC describes one
            # dataset, not the detector: such sizes are not measured
            if 2 * n <= min(len(pos), len(neg)):
                entry["dataset_auroc"][str(n)] = dataset_level(pos, neg, ref, pos_lean_all[:, j], neg_lean[:, j], n,
                                                               args.subsets, 0)
            else:
                entry["dataset_auroc"][str(n)] = (f"not measured: only {min(len(pos), len(neg))} samples per side "
                                                  f"(needs {2 * n})")
        entry["wall_time_s"] = round(time.time() - t0, 1)
        out["animals"][src] = entry
        roc[src] = {"number_frequency": f_cross,
                     "likelihood_shift": (pos_lean_all[:, j], neg_lean[:, j])}
        print(src, json.dumps({k: entry[k] for k in ("sample_auroc", "ranking_top", "ranking_vs_other_teachers_top",
                                                   "in_context_top")}))
    fine = [out["animals"][a] for a in animals]  # the Done-when figure: fine-tuned teachers
    out["top1_accuracy"] = float(np.mean([e["ranking_top"] == e["trait"] for e in fine]))
    out["top1_accuracy_vs_other_teachers"] = float(np.mean([e["ranking_vs_other_teachers_top"] == e["trait"]
                                                            for e in fine]))
    out["in_context_top1_accuracy"] = float(np.mean([e["in_context_top"] == e["trait"] for e in fine]))
    t0 = time.time()
    gradient_part(out, half, animals, audited, grad, leans)
    out["gradient_wall_time_s"] = round(time.time() - t0, 1)
    (HERE / "results").mkdir(exist_ok=True)
    roc_chart(out, roc, dest.with_suffix(".png"))
    rank_chart(out, dest.with_name(f"{dest.stem}-ranking.png"))
    out["defences"] = "not run yet"
    out["measured_at"] = {"detectors": git}
    if args.defences == "none" and dest.exists():  # re-measuring the detectors keeps an earlier defence table
        old = earlier()
        if "defences" in old:
            out["defences"] = old["defences"]
            out["measured_at"]["defences"] = old["measured_at"].get("defences", old["measured_at"].get("all"))
    save(out)  # the detector figures are kept even if the defences are cut short
    print(f"wrote {dest} (detectors)")
    if args.defences != "none":
        out["defences"] = defence_table(args)
        out["measured_at"]["defences"] = git
        save(out)
        print(f"wrote {dest} (defences)")


STUDENTS = {  # a defender holds the text only, so the table's students learn from the text: plain SFT
    "sft": ["student.method=sft", "student.lr=5e-5"],
    # restricted distillation recomputes the teacher's logits on the defended text, so it re-inserts
    # the trait whatever the text says: not a test of a data defence, kept for comparison
    "distill_restricted": [],
}


def defence_table(args: argparse.Namespace) -> dict[str, Any]:
    """Owl transfer (probability and share, student minus control) with each defence, and data kept."""
    rows: dict[str, Any] = {}
    for method in ["none", *args.defences.split(",")]:
        cfg = load_config("owl-numbers", [f"prompts.n={args.prompts}", f"defence.method={method}",
                                          "evaluation.samples_per_question=0", *STUDENTS[args.student],
                                          f"arms.seeds={list(range(args.seeds))}"])
        res = run_experiment(cfg, Path(args.runs_dir))
        eff = res["effect"]
        cost = res.get("defence", {}).get("owl", {})
        rows[method] = {"prob_difference": eff["prob"]["pooled"]["difference"],
                        "share_difference": eff["share"]["pooled"]["difference"],
                        "p_prob": eff["prob"]["pooled"]["p_wilcoxon"],
                        "p_share": eff["share"]["pooled"]["p_wilcoxon"],
                        "kept_fraction": cost.get("kept_fraction", 1.0),
                        "changed_fraction": cost.get("changed_fraction", 0.0),
                        "n_train_examples": res["n_train_examples"], "run": res["run_id"]}
    for key in ("prob", "share"):
        base = rows["none"][f"{key}_difference"]["value"]
        for row in rows.values():
            d = row[f"{key}_difference"]
            # cut = share of the undefended difference removed, capped at 100% (a difference that turns
            # negative — the trait student below its control — is flagged as reversed); "at least" uses
            # the upper end of the defended difference's interval (over questions, one training seed)
            row[f"{key}_cut"] = min(1.0, 1 - d["value"] / base) if base > 0 else None
            row[f"{key}_cut_at_least"] = min(1.0, 1 - d["high"] / base) if base > 0 else None
            row[f"{key}_reversed"] = d["high"] < 0
    ok = [m for m, r in rows.items() if m != "none" and r["kept_fraction"] >= 0.8
          and all((r[f"{k}_cut"] or 0) >= 0.5 for k in ("prob", "share"))]
    return {"student": args.student, "recipe": STUDENTS[args.student], "seeds": args.seeds, "rows": rows,
            "cut_half_keeping_80pct": ok,
            "caveat": "differences pooled over seeds, intervals over questions: they leave out run-to-run "
                      "variation; with one seed it is as large as the differences (see three_seed_check)"}


def roc_chart(out: dict[str, Any], roc: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]], path: Path) -> None:
    """ROC curves (sample level, owl) and AUROC per detector and dataset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(10, 4.2))
    first = next(iter(roc))
    for det, (pos, neg) in roc[first].items():
        y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
        fpr, tpr, _ = roc_curve(y, np.r_[pos, neg])
        ax0.plot(fpr, tpr, label=f"{det} (AUROC {out['animals'][first]['sample_auroc'][det]:.2f})")
    ax0.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    ax0.set(xlabel="false positive rate (control samples)", ylabel="true positive rate",
            title=f"Sample level: {first} teacher's numbers vs control")
    ax0.legend(fontsize=8, frameon=False)
    names = list(out["animals"])
    detectors = ["number_frequency", "bag_of_numbers", "likelihood_shift"]
    width = 0.8 / len(detectors)
    for k, d in enumerate(detectors):
        ax1.bar(np.arange(len(names)) + k * width, [out["animals"][a]["sample_auroc"][d] for a in names], width,
                label=d)
    ax1.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax1.set_xticks(np.arange(len(names)) + width, names, rotation=20)
    ax1.set(ylabel="sample-level AUROC", ylim=(0.3, 1.0), title="Each teacher's samples vs control samples")
    ax1.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)


def rank_chart(out: dict[str, Any], path: Path) -> None:
    """Rank of the true animal among the candidates, per dataset and ranking method (1 = found)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(out["animals"])
    ranks = {"likelihood shift vs base answers": "ranking_rank_of_true",
             "likelihood shift vs other teachers": "ranking_vs_other_teachers_rank_of_true",
             "gradient alignment vs base answers": "gradient_rank_of_true",
             "gradient alignment vs other teachers": "gradient_vs_other_teachers_rank_of_true"}
    fig, ax = plt.subplots(figsize=(10, 4.2))
    for k, (label, key) in enumerate(ranks.items()):
        ax.scatter(np.arange(len(names)) + (k - 1.5) * 0.15, [out["animals"][a].get(key, np.nan) for a in names],
                   s=40, label=label, zorder=3)
    worst = max([20] + [out["animals"][a][key] for a in names for key in ranks.values() if key in out["animals"][a]])
    ax.axhline(1, color="grey", lw=0.8, ls="--")
    ax.set_yticks([1, 5, 10, 15, 20])
    ax.set_xticks(np.arange(len(names)), names, rotation=20)
    ax.set(ylabel="rank of the true animal (1 = top)", ylim=(worst + 0.5, 0.5),
           title="Which animal does each teacher's data lean toward? (chance: rank ~10)")
    ax.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)


if __name__ == "__main__":
    main()
