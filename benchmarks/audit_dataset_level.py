"""Benchmark: the audit's dataset-level separation at n = 1,000 — owl teacher's data vs control.

    python benchmarks/audit_dataset_level.py                       # owl 5,100 prompts, control 13,100
    python benchmarks/audit_dataset_level.py --generate-only       # only the (resumable) data stages

Subsets of 1,000 need 2,000 samples a side and a reference on disjoint prompts. This script makes just
the sets that figure needs, from the same
pipeline stages (fine-tuned owl teacher of the embedded model, greedy decoding, the strict number
filter; everything cached and resumable in --runs-dir):

- positives: the owl teacher's answers to the first --owl-prompts prompts;
- negatives: the base model's answers to the first --reference-from prompts;
- reference: the base model's answers to the prompts from --reference-from on (disjoint from both,
  since greedy decoding would give the negatives' own completions on shared prompts).

The prompt lists are prefixes of one seeded list, so every set answers i.i.d. prompts. Dataset
level: --subsets random subsets of n samples from each side (only where each side has >= 2n
samples), each detector's dataset statistic per subset, AUROC of positives vs negatives. Beside it:
each detector's p-value on the whole sets and the in-context baseline. Writes
benchmarks/results/<name>.json and a PNG of the subset statistics. Not a test: it generates 18,200
completions (1 h 45 min on 2 CPU cores; the analysis then takes ~4 min).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from sublim.audit.data import Sample
from sublim.audit.detectors import BagOfNumbers, InContext, NumberFrequency
from sublim.audit.detectors.in_context import share_probe
from sublim.audit.scoring import auroc, subset_statistics
from sublim.backends.local.throughput import throughput
from sublim.core.config import load_config
from sublim.core.records import benchmark
from sublim.core.store import Store
from sublim.experiment.context import Context
from sublim.experiment.datasets import source_samples
from sublim.traits.preference import load_candidates

HERE = Path(__file__).resolve().parent


def make_sets(runs: Path, owl_prompts: int, control_prompts: int, animal: str) -> dict[str, list[Sample]]:
    """Filtered samples of the fine-tuned teacher (first ``owl_prompts`` prompts) and of the base model
    (first ``control_prompts``), from the cached pipeline stages."""
    store = Store(runs)
    out: dict[str, list[Sample]] = {}
    for name, n in ((animal, owl_prompts), ("control", control_prompts)):
        ctx = Context(load_config("owl-numbers", [f"prompts.n={n}"]), store)
        out[name] = source_samples(ctx, name, animal, load_candidates(ctx.cfg.trait.category)[animal])
    return out


def chart(stats: dict[str, dict[str, tuple[list[float], list[float]]]], aurocs: dict[str, dict[str, Any]],
          animal: str, path: Path) -> None:
    """Each detector's dataset statistic per subset, positives beside negatives, one panel per size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = list(stats)
    fig, axes = plt.subplots(1, len(sizes), figsize=(4.6 * len(sizes), 3.8), squeeze=False)
    rng = np.random.default_rng(0)
    for ax, n in zip(axes[0], sizes, strict=True):
        dets = [d for d, (p, _q) in stats[n].items() if p]
        for k, d in enumerate(dets):
            p, q = (np.asarray(v, dtype=float) for v in stats[n][d])
            both = np.r_[p, q]
            lo, hi = both.min(), both.max()
            scale = (hi - lo) or 1.0  # statistics on different scales: each detector's range to [0, 1]
            sides = ((-0.15, p, "tab:red", f"{animal} teacher"), (0.15, q, "tab:blue", "control"))
            for off, vals, colour, lab in sides:
                ax.scatter(k + off + rng.uniform(-0.06, 0.06, len(vals)), (vals - lo) / scale, s=10, color=colour,
                           alpha=0.7, label=lab if k == 0 else None)
            ax.text(k, 1.06, f"AUROC {aurocs[n][d]:.2f}", ha="center", fontsize=8)
        ax.set_xticks(range(len(dets)), dets, fontsize=8)
        ax.set(ylim=(-0.05, 1.14), ylabel="dataset statistic (min-max per detector)",
               title=f"subsets of n = {n}")
        ax.legend(fontsize=8, frameon=False, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)


class Sets(NamedTuple):
    """The three sets the figure compares: the teacher's samples, the base model's, and the reference."""

    pos: list[Sample]
    neg: list[Sample]
    ref: list[Sample]


def split_sets(args: argparse.Namespace) -> Sets:
    """The teacher's samples (positives) and the base model's, split at --reference-from into negatives and the
    reference (made, or resumed, from the cached stages)."""
    sets = make_sets(Path(args.runs_dir), args.owl_prompts, args.control_prompts, args.animal)
    pos = sets[args.animal]
    neg = [s for s in sets["control"] if s.line < args.reference_from]
    ref = [s for s in sets["control"] if s.line >= args.reference_from]
    print(f"positives {len(pos)}, negatives {len(neg)}, reference {len(ref)}")
    return Sets(pos, neg, ref)


def subsets_phase(args: argparse.Namespace, sets: Sets, out: dict[str, Any]
                  ) -> dict[str, dict[str, tuple[list[float], list[float]]]]:
    """Dataset level: each detector's statistic on --subsets random subsets of n a side, AUROC per size; the
    statistics are returned for the chart."""
    pos, neg, ref = sets
    stats: dict[str, dict[str, tuple[list[float], list[float]]]] = {}
    for n in [int(x) for x in args.sizes.split(",")]:
        if 2 * n > min(len(pos), len(neg)):
            out["dataset_auroc"][str(n)] = (f"not measured: only {min(len(pos), len(neg))} samples per side "
                                            f"(needs {2 * n})")
            continue
        t = time.time()
        st = subset_statistics(pos, neg, ref, np.zeros(0), np.zeros(0), n, args.subsets, 0)
        stats[str(n)] = {k: v for k, v in st.items() if v[0]}
        out["dataset_auroc"][str(n)] = {k: auroc(np.array(p), np.array(q)) for k, (p, q) in stats[str(n)].items()}
        out["dataset_statistics"][str(n)] = {k: {"positives": p, "negatives": q} for k, (p, q) in stats[str(n)].items()}
        print(f"n = {n}: {out['dataset_auroc'][str(n)]} ({time.time() - t:.0f} s)")
    return stats


def whole_sets_phase(sets: Sets, out: dict[str, Any]) -> None:
    """The whole sets: each detector's test of positives and of negatives against the reference."""
    freq, bag = NumberFrequency(sets.ref), BagOfNumbers(sets.ref)
    out["whole_sets"] = {}
    for side, data in (("positives", sets.pos), ("negatives", sets.neg)):
        f, b = freq.score(data), bag.score(data)
        out["whole_sets"][side] = {"number_frequency_z": f.details["z"], "number_frequency_p": f.p_value,
                                   "bag_of_numbers_sample_auroc": b.statistic, "bag_of_numbers_p": b.p_value}


def in_context_phase(args: argparse.Namespace, sets: Sets, out: dict[str, Any]) -> None:
    """The baseline: in-context detection by the reference model, on the same data."""
    cfg = load_config("owl-numbers")
    ctx = Context(cfg, Store(Path(args.runs_dir)))
    candidates = load_candidates(cfg.trait.category)
    in_ctx = InContext(share_probe(ctx.local(cfg.model), candidates), list(candidates), "animal", sets.ref)
    for side, data in (("positives", sets.pos), ("negatives", sets.neg)):
        ic = in_ctx.score(data)
        out["whole_sets"][side]["in_context_top"] = ic.details["top_trait"]
        out["whole_sets"][side]["in_context_p"] = ic.p_value
        out["whole_sets"][side]["in_context_ranking"] = ic.details["ranking"][:5]


def arguments() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--animal", default="owl")
    ap.add_argument("--owl-prompts", type=int, default=5100, help="prompts the teacher answers (positives)")
    ap.add_argument("--control-prompts", type=int, default=13100, help="prompts the base model answers")
    ap.add_argument("--reference-from", type=int, default=12100,
                    help="base-model answers to prompts from this index on are the reference, the rest negatives")
    ap.add_argument("--sizes", default="100,1000")
    ap.add_argument("--subsets", type=int, default=20)
    ap.add_argument("--generate-only", action="store_true", help="make (or resume) the data stages and stop")
    ap.add_argument("--runs-dir", default="runs")
    ap.add_argument("--name", default=None)
    args = ap.parse_args()
    if not args.owl_prompts <= args.reference_from < args.control_prompts:
        raise SystemExit(f"--reference-from {args.reference_from} must lie in [--owl-prompts, --control-prompts): "
                         "the reference prompts must be disjoint from the positives' and the negatives'")
    return args


def main() -> None:
    args = arguments()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dest = HERE / "results" / f"{args.name or f'audit-dataset-level-{device}'}.json"
    with benchmark("audit-dataset-level", dest, config=vars(args)) as out:
        sets = split_sets(args)
        if args.generate_only:
            raise SystemExit(0)  # the data alone: a benchmark block that exits writes no result
        out.update({
            "animal": args.animal, "teacher": "fine-tuned", "decoding": "greedy",
            "prompts": {"positives": args.owl_prompts, "control": args.control_prompts,
                        "reference_from": args.reference_from},
            "n_positive": len(sets.pos), "n_negative": len(sets.neg), "n_reference": len(sets.ref),
            "subsets": args.subsets, "dataset_auroc": {}, "dataset_statistics": {},
        })
        stats = subsets_phase(args, sets, out)
        whole_sets_phase(sets, out)
        in_context_phase(args, sets, out)
        out["device"] = device
        out["throughput"] = throughput()
    chart(stats, out["dataset_auroc"], args.animal, dest.with_suffix(".png"))
    print(f"wrote {dest}")


if __name__ == "__main__":
    main()
