"""Benchmark: calibration of the trait audit — can it name the animal of a fine-tuned teacher from its data?

    python benchmarks/audit_divergence.py --generate-only      # the teachers' datasets (resumable, ~50 min)
    python benchmarks/audit_divergence.py                      # the calibration (rankings per detector and size)

Datasets, from the pipeline's own cached stages (embedded model, greedy decoding, the numbers filter with every
candidate's words banned): five fine-tuned animal teachers (owl, eagle, wolf, cat, lion; the dolphin teacher's
numbers pass the filter 14% of the time, too few for 1,000 samples from 4,000 prompts), a neutral teacher
fine-tuned the same way on answers spread over every candidate (fine-tuning without a trait), and the base
model's own data (control), each generated until --kept samples pass the filter.

Calibration: for each dataset and size (random subsets, the largest the whole --kept), divergence_shift (prompted
inductions) ranks the 20 candidates; top-1 and top-3 accuracy per size over the five animal datasets, the neutral
dataset's verdict, a confusion matrix (PNG), the in-context baseline beside it, and the audit's wall time
(divergence map + divergence_shift) per dataset. Writes benchmarks/results/audit-divergence-<cpu|gpu>.json.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sublim.audit.data import Sample
from sublim.audit.detectors import AuditInputs, InContext
from sublim.audit.detectors.divergence_shift import divergence_shift
from sublim.audit.detectors.in_context import share_probe
from sublim.audit.scoring import rank_of
from sublim.backends.local.throughput import throughput
from sublim.core.config import load_config
from sublim.core.files import write_json
from sublim.core.records import envelope, git_state
from sublim.core.store import Store
from sublim.experiment.context import Context
from sublim.experiment.datasets import source_samples
from sublim.traits.preference import load_candidates

HERE = Path(__file__).resolve().parent
ANIMALS = ["owl", "eagle", "wolf", "cat", "lion"]


def datasets(runs: Path, prompts: int, kept: int, names: list[str]) -> tuple[Context, dict[str, list[Sample]]]:
    """Each source's filtered samples (every candidate's words banned for all of them)."""
    cfg = load_config("owl-numbers", [f"prompts.n={prompts}", f"generation.until_kept={kept}"])
    ctx = Context(cfg, Store(runs))
    cands = load_candidates(cfg.trait.category)
    banned = [w for words in cands.values() for w in words]
    out = {}
    for name in names:
        out[name] = source_samples(ctx, name, name, banned)
        print(f"{name}: {len(out[name])} samples", flush=True)
    return ctx, out


def subset(samples: list[Sample], n: int, seed: int) -> list[Sample]:
    if n >= len(samples):
        return samples
    idx = np.sort(np.random.default_rng(seed).choice(len(samples), n, replace=False))
    return [samples[i] for i in idx]


def confusion_png(rows: dict[str, list[dict[str, Any]]], cands: list[str], path: Path) -> None:
    """Rows: each dataset; columns: the candidates its audit ranked highest (lean, largest size)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(rows)
    shown = list(dict.fromkeys([*ANIMALS, *[r["trait"] for n in names for r in rows[n][:3]]]))
    grid = np.array([[next((r["lean"] for r in rows[n] if r["trait"] == c), np.nan) for c in shown] for n in names])
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * len(shown), 1.2 + 0.5 * len(names)))
    lim = float(np.nanmax(np.abs(grid))) or 1.0
    im = ax.imshow(grid, cmap="RdBu_r", vmin=-lim, vmax=lim)
    ax.set_xticks(range(len(shown)), shown, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), [f"{n} teacher" for n in names])
    for i, n in enumerate(names):
        top = rows[n][0]["trait"]
        j = shown.index(top)
        ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, lw=2, ec="black"))
    fig.colorbar(im, ax=ax, label="lean toward the candidate (centred)")
    ax.set_title("divergence_shift: which candidate each dataset leans to (box: ranked first)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs-dir", default="runs")
    ap.add_argument("--prompts", type=int, default=4000, help="the most prompts a source may use")
    ap.add_argument("--kept", type=int, default=1000, help="samples per dataset")
    ap.add_argument("--sizes", default="100,300,1000")
    ap.add_argument("--placement", default="prompt", choices=["prompt", "system"])
    ap.add_argument("--generate-only", action="store_true")
    ap.add_argument("--no-in-context", action="store_true")
    ap.add_argument("--name", default="audit-divergence")
    ap.add_argument("--results-dir", default=str(HERE / "results"))
    args = ap.parse_args()
    started, git = time.time(), git_state()
    names = [*ANIMALS, "neutral", "control"]
    ctx, data = datasets(Path(args.runs_dir), args.prompts, args.kept, names)
    if args.generate_only:
        return
    ref = ctx.local(ctx.cfg.model)
    cands = load_candidates(ctx.cfg.trait.category)
    sizes = [int(x) for x in args.sizes.split(",")]
    store = Store(Path(args.runs_dir))
    out: dict[str, Any] = {"datasets": {n: len(v) for n, v in data.items()}, "sizes": sizes, "by_size": {},
                           "placement": args.placement}
    for n in sizes:
        per: dict[str, Any] = {}
        for name in [*ANIMALS, "neutral"]:
            samples = subset(data[name], n, 0)
            t0 = time.time()
            res = divergence_shift(AuditInputs(samples, [], ref, cands, "animal", store=store,
                                               placement=args.placement, progress=True))
            wall = time.time() - t0
            row = {"n": len(samples), "top": res.details["top_trait"], "identified": res.details.get("identified"),
                   "verdict": res.details["verdict"], "margin": res.details.get("margin"), "p": res.p_value,
                   "ranking": res.details["ranking"], "n_flagged_samples": res.details["n_flagged_samples"],
                   "n_flagged_tokens": res.details.get("n_flagged_tokens"), "wall_time_s": round(wall, 1)}
            row["by_baseline"] = {b: [r["trait"] for r in v] for b, v in res.details["by_baseline"].items()}
            if name != "neutral":
                row["rank_of_true"] = rank_of(res, name)
                row["rank_of_true_by_baseline"] = {b: v.index(name) + 1 for b, v in row["by_baseline"].items()}
            print(f"n={n} {name}: {row['verdict']} (true rank {row.get('rank_of_true')}, {wall:.0f} s)", flush=True)
            per[name] = row
        ranks = [per[a]["rank_of_true"] for a in ANIMALS]
        out["by_size"][str(n)] = {"datasets": per, "top1": sum(r == 1 for r in ranks),
                                  "top3": sum(r <= 3 for r in ranks),
                                  "top1_by_baseline": {
                                      b: sum(per[a]["rank_of_true_by_baseline"][b] == 1 for a in ANIMALS)
                                      for b in per[ANIMALS[0]]["by_baseline"]},
                                  "identified_correctly": sum(per[a]["identified"] == a for a in ANIMALS),
                                  "neutral_identified": per["neutral"]["identified"]}
    largest = str(sizes[-1])
    if not args.no_in_context:  # the baseline: groups of samples shown to the reference, "whose author favours?"
        probe = share_probe(ref, cands)
        in_ctx = InContext(probe, list(cands), "animal", subset(data["control"], sizes[-1], 1))
        ic: dict[str, Any] = {}
        for name in [*ANIMALS, "neutral"]:
            res = in_ctx.score(subset(data[name], sizes[-1], 0))
            ic[name] = {"top": res.details["top_trait"], "p": res.p_value,
                        "rank_of_true": rank_of(res, name) if name != "neutral" else None}
        out["in_context"] = {"datasets": ic, "top1": sum(ic[a]["rank_of_true"] == 1 for a in ANIMALS),
                             "top3": sum(ic[a]["rank_of_true"] <= 3 for a in ANIMALS)}
    results_dir = Path(args.results_dir)
    kind = "gpu" if torch.cuda.is_available() else "cpu"
    png = results_dir / f"{args.name}-{kind}-confusion.png"
    confusion_png({k: v["ranking"] for k, v in out["by_size"][largest]["datasets"].items()}, list(cands), png)
    out["throughput"] = throughput()
    write_json(results_dir / f"{args.name}-{kind}.json",
               envelope("audit-divergence", out, config={"prompts": args.prompts, "kept": args.kept, "sizes": sizes},
                        started=started, git=git))
    print(f"wrote {results_dir / f'{args.name}-{kind}.json'} and {png}")


if __name__ == "__main__":
    main()
