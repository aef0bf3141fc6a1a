"""Benchmark: how well the audit detectors find a hidden trait, and what the defences cost.

    python benchmarks/audit.py                                   # 5 animals, 800 prompts, CPU-sized
    python benchmarks/audit.py --prompts 6000 --sizes 100,1000   # the n = 1,000 figure (GPU-sized)
    python benchmarks/audit.py --defences none                   # detectors only

Data come from the pipeline (fine-tuned teachers, greedy decoding, the strict number filter; the
stages are cached in --runs-dir). Prompts are split in two halves: the base model's answers to
the first half are the detectors' reference sample; each teacher's and the base model's answers
to the second half are the audited datasets (positives and negatives). Writes
benchmarks/results/<name>.json and a ROC chart. Not a test: it trains real models.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from sublim.audit.data import Sample
from sublim.audit.detectors import BagOfNumbers, InContext, LikelihoodShift, NumberFrequency
from sublim.audit.run import TRAIT_TEMPLATE, _logprob_fn, _probe_fn
from sublim.config import load_config
from sublim.pipeline import stages
from sublim.pipeline.experiment import run_experiment
from sublim.pipeline.stages import Context
from sublim.pipeline.store import Store, machine_info, read_jsonl
from sublim.traits.preference import load_candidates

HERE = Path(__file__).resolve().parent


def auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    return float(roc_auc_score(y, np.r_[pos, neg]))


def datasets(ctx: Context, animals: list[str], candidates: dict[str, list[str]]) -> dict[str, list[Sample]]:
    """Filtered samples per source (each animal's teacher and 'control'), from the cached pipeline."""
    prompt_art = stages.prompts(ctx)
    out = {}
    banned = [w for a in animals for w in candidates[a]]
    for name in [*animals, "control"]:
        ref = ctx.base_ref(ctx.cfg.model) if name == "control" else stages.teacher(ctx, name, candidates)
        art = stages.filtered(ctx, stages.generation(ctx, ref, prompt_art), f"{name} numbers", banned, "")
        out[name] = [Sample(r["index"], r["prompt"], r["completion"]) for r in read_jsonl(art.file("dataset.jsonl"))]
    return out


def dataset_level(pos: list[Sample], neg: list[Sample], ref: list[Sample], pos_lean: np.ndarray,
                  neg_lean: np.ndarray, n: int, subsets: int, seed: int) -> dict[str, Any]:
    """AUROC of each detector's dataset statistic over random subsets of size n (positives vs negatives)."""
    rng = np.random.default_rng(seed)
    stats: dict[str, tuple[list[float], list[float]]] = {k: ([], []) for k in
                                                        ("number_frequency", "bag_of_numbers", "likelihood_shift")}
    freq = NumberFrequency(ref, n_permutations=0)
    bag = BagOfNumbers(ref, seed=seed)
    for _ in range(subsets):
        for which, data, lean in ((0, pos, pos_lean), (1, neg, neg_lean)):
            sub = [data[i] for i in rng.choice(len(data), n, replace=False)]
            stats["number_frequency"][which].append(freq.score(sub).statistic)
            stats["bag_of_numbers"][which].append(bag.score(sub).statistic)
            if n <= min(len(pos_lean), len(neg_lean)):  # the likelihood scan ran on fewer samples
                stats["likelihood_shift"][which].append(float(lean[rng.choice(len(lean), n, replace=False)].mean()))
    return {k: auroc(np.array(p), np.array(q)) if p else "not measured: too few scanned samples"
            for k, (p, q) in stats.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--animals", default="owl,dolphin,eagle,wolf,cat")
    ap.add_argument("--prompts", type=int, default=800)
    ap.add_argument("--sizes", default="50,100,1000")
    ap.add_argument("--subsets", type=int, default=20)
    ap.add_argument("--defences", default="sort,remap,shuffle,drop_top")
    ap.add_argument("--shift-samples", type=int, default=1000,
                    help="samples per dataset for the likelihood scan (its cost: 20 model passes per sample)")
    ap.add_argument("--runs-dir", default="runs")
    ap.add_argument("--name", default=None)
    args = ap.parse_args()
    import torch

    t_start = time.time()
    animals = args.animals.split(",")
    cfg = load_config("owl-numbers", [f"prompts.n={args.prompts}"])
    ctx = Context(cfg, Store(Path(args.runs_dir)))
    candidates = load_candidates(cfg.trait.category)
    data = datasets(ctx, animals, candidates)
    half = {k: ([s for s in v if s.line % 2 == 0], [s for s in v if s.line % 2 == 1]) for k, v in data.items()}
    ref, neg = half["control"]
    base = ctx.base(cfg.model)
    lp = _logprob_fn(base.model, base.tokenizer, True, "log-probs")
    names = list(candidates)
    cap = args.shift_samples  # the scan costs (candidates + 1) model passes per sample
    shift = LikelihoodShift(lp, names, TRAIT_TEMPLATE, ref[:cap])
    neg_lean = shift.lean(neg[:cap]) - shift.ref_leans.mean(0)  # type: ignore[union-attr]
    probe = _probe_fn(base.model, base.tokenizer, candidates)
    in_ctx = InContext(probe, names, "animal", ref)
    out: dict[str, Any] = {"animals": {}, "n_reference": len(ref), "n_negative": len(neg), "prompts": args.prompts,
                           "likelihood_scan_samples_per_dataset": cap}
    for a in animals:
        pos = half[a][1]
        t0 = time.time()
        raw = shift.lean(pos[:cap])
        res_shift = shift.score(pos[:cap], raw)
        pos_lean_all = raw - shift.ref_leans.mean(0)  # type: ignore[union-attr]
        j = names.index(a)
        freq = NumberFrequency(ref)
        f_pos, f_neg = freq.score(pos), freq.score(neg)
        bag = BagOfNumbers(ref)
        b_pos, b_neg = bag.score(pos), bag.score(neg)
        ic = in_ctx.score(pos)
        entry: dict[str, Any] = {
            "n_positive": len(pos), "pass_rate": len(data[a]) / args.prompts,
            "sample_auroc": {"number_frequency": auroc(f_pos.sample_scores, f_neg.sample_scores),
                             "bag_of_numbers": auroc(b_pos.sample_scores, b_neg.sample_scores),
                             "likelihood_shift": auroc(pos_lean_all[:, j], neg_lean[:, j])},
            "dataset_p": {"number_frequency": f_pos.p_value, "bag_of_numbers": b_pos.p_value,
                          "likelihood_shift": res_shift.p_value, "in_context": ic.p_value},
            "negative_p": {"number_frequency": f_neg.p_value, "bag_of_numbers": b_neg.p_value},
            "ranking_top": res_shift.details["top_trait"], "ranking_rank_of_true": 1 + [
                r["trait"] for r in res_shift.details["ranking"]].index(a),
            "in_context_top": ic.details["top_trait"],
            "dataset_auroc": {},
        }
        for n in [int(x) for x in args.sizes.split(",")]:
            if n <= min(len(pos), len(neg)):
                entry["dataset_auroc"][str(n)] = dataset_level(pos, neg, ref, pos_lean_all[:, j], neg_lean[:, j], n,
                                                               args.subsets, 0)
            else:
                entry["dataset_auroc"][str(n)] = f"not measured: only {min(len(pos), len(neg))} samples per side"
        entry["wall_time_s"] = round(time.time() - t0, 1)
        out["animals"][a] = entry
        print(a, json.dumps({k: entry[k] for k in ("sample_auroc", "ranking_top", "in_context_top")}))
    out["top1_accuracy"] = float(np.mean([e["ranking_top"] == a for a, e in out["animals"].items()]))
    out["in_context_top1_accuracy"] = float(np.mean([e["in_context_top"] == a for a, e in out["animals"].items()]))
    out["machine"] = machine_info()
    name = args.name or f"audit-{'gpu' if torch.cuda.is_available() else 'cpu'}"
    (HERE / "results").mkdir(exist_ok=True)
    dest = HERE / "results" / f"{name}.json"
    roc_chart(out, HERE / "results" / f"{name}.png")
    out["defences"] = "not run yet"
    out["wall_time_s"] = round(time.time() - t_start, 1)
    dest.write_text(json.dumps(out, indent=2))  # the detector figures are kept even if the defences are cut short
    print(f"wrote {dest} (detectors)")
    if args.defences != "none":
        out["defences"] = defence_table(args)
        out["wall_time_s"] = round(time.time() - t_start, 1)
        dest.write_text(json.dumps(out, indent=2))
        print(f"wrote {dest} (defences)")


def defence_table(args: argparse.Namespace) -> dict[str, Any]:
    """Owl transfer (probability and share, student minus control) with each defence, and data kept."""
    table = {}
    for method in ["none", *args.defences.split(",")]:
        cfg = load_config("owl-numbers", [f"prompts.n={args.prompts}", f"defence.method={method}",
                                          "evaluation.samples_per_question=0"])
        res = run_experiment(cfg, Path(args.runs_dir))
        eff = res["effect"]
        table[method] = {"prob_difference": eff["prob"]["pooled"]["difference"],
                         "share_difference": eff["share"]["pooled"]["difference"],
                         "p_share": eff["share"]["pooled"]["p_wilcoxon"],
                         "kept_fraction": res.get("defence", {}).get("owl", {}).get("kept_fraction", 1.0),
                         "n_train_examples": res["n_train_examples"]}
    base = table["none"]["prob_difference"]["value"]
    for row in table.values():
        row["transfer_cut"] = 1 - row["prob_difference"]["value"] / base if base > 0 else None
    return table


def roc_chart(out: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    animals = list(out["animals"])
    detectors = ["number_frequency", "bag_of_numbers", "likelihood_shift"]
    width = 0.8 / len(detectors)
    for k, d in enumerate(detectors):
        ax.bar(np.arange(len(animals)) + k * width, [out["animals"][a]["sample_auroc"][d] for a in animals], width,
               label=d)
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_xticks(np.arange(len(animals)) + width, animals)
    ax.set_ylabel("sample-level AUROC")
    ax.set_ylim(0.3, 1.0)
    ax.set_title("Detecting each teacher's numbers against the base model's")
    ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)


if __name__ == "__main__":
    main()
