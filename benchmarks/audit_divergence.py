"""Benchmark: calibration of the trait audit — can it name the animal of a fine-tuned teacher from its data?

    python benchmarks/audit_divergence.py --generate-only      # the teachers' datasets (resumable, ~70 min)
    python benchmarks/audit_divergence.py                      # the calibration (rankings per detector and size)
    python benchmarks/audit_divergence.py --proxy-seeds 2 --sizes 100,300 --skip prompted,timed,in_context \
        --prompts-for= --name audit-divergence-seeds           # proxies of two seeds per candidate (cat at 503)
    python benchmarks/audit_divergence.py --only cat --timed cat --skip proxy,prompted,early_ends,in_context \
        --name audit-timed                                     # the speed figure alone, on the most-flagged data

Datasets, from the pipeline's own cached stages (embedded model, greedy decoding, the numbers filter with every
candidate's words banned): five fine-tuned animal teachers (owl, eagle, wolf, cat, lion; the dolphin teacher's
numbers pass the filter 14% of the time, too few for 1,000 samples from 4,000 prompts), a neutral teacher
fine-tuned the same way on answers spread over every candidate (fine-tuning without a trait), and the base
model's own data (control), each generated until --kept samples pass the filter.

Calibration: divergence_shift ranks the 20 candidates for each dataset and size (random subsets of the whole
--kept; a sample's reads depend on it alone, so a subset's reads are the full set's rows), with proxy-teacher
inductions (21 proxies, each dataset's flagged tokens read under all of them at once, prompts shared) and with
prompted inductions (--prompted-sizes); top-1 and top-3 over the five animal datasets per size and statistic,
alone, against the neutral teacher's data and against all the other datasets (the verdict as shipped names a trait
only when it comes first clearly against each contrast); what a clear margin alone would have named, rightly and
wrongly; the neutral dataset's verdict, a confusion PNG per induction kind,
the in-context baseline beside them, each dataset's early-end share (a fine-tune's mark or the trait's?), and one
whole prompted audit of --timed at --kept timed from nothing (map +
divergence_shift, no cache). Every model read (maps, proxies, reads) is a store artifact: a crash loses no model work.
Writes benchmarks/results/audit-divergence-<cpu|gpu>.json and -proxy.png / -prompted.png.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

import sublim.audit.detectors.divergence_shift as dsf
from sublim.audit.data import Sample
from sublim.audit.detectors import AuditContext, AuditData, InContext
from sublim.audit.detectors.divergence_shift import (
    BASELINES,
    PRIMARY,
    DivergenceShiftParams,
    divergence_shift,
    ranking,
)
from sublim.audit.detectors.in_context import share_probe
from sublim.audit.proxies import proxy_recipe, proxy_seeds, proxy_split
from sublim.audit.scoring import rank_of
from sublim.backends.local.throughput import throughput
from sublim.backends.reads import FlaggedLogprobs
from sublim.core.config import load_config
from sublim.core.records import benchmark
from sublim.core.store import Store
from sublim.experiment.context import Context
from sublim.experiment.datasets import source_samples
from sublim.traits.preference import load_candidates

HERE = Path(__file__).resolve().parent
ANIMALS = ["owl", "eagle", "wolf", "cat", "lion"]


def datasets(runs: Path, prompts: int, kept: int, names: list[str], more: dict[str, int] | None = None
             ) -> tuple[Context, dict[str, list[Sample]]]:
    """Each source's filtered samples (every candidate's words banned for all of them); ``more`` gives a source
    whose numbers pass the filter rarely a larger prompt set."""
    def context(n: int) -> Context:
        return Context(load_config("owl-numbers", [f"prompts.n={n}", f"generation.until_kept={kept}"]), Store(runs))

    ctx = context(prompts)
    cands = load_candidates(ctx.cfg.trait.category)
    banned = [w for words in cands.values() for w in words]
    out = {}
    for name in names:
        own = context(more[name]) if more and name in more else ctx
        out[name] = source_samples(own, name, name, banned)
        print(f"{name}: {len(out[name])} samples", flush=True)
    return ctx, out


def subset(samples: list[Sample], n: int, seed: int) -> list[Sample]:
    if n >= len(samples):
        return samples
    idx = np.sort(np.random.default_rng(seed).choice(len(samples), n, replace=False))
    return [samples[i] for i in idx]


def confusion_png(rows: dict[str, list[dict[str, Any]]], cands: list[str], path: Path, which: str) -> None:
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
        if n in shown:  # the teacher's own animal
            k = shown.index(n)
            ax.add_patch(plt.Rectangle((k - 0.42, i - 0.42), 0.84, 0.84, fill=False, lw=2, ec="tab:green", ls="--"))
    fig.colorbar(im, ax=ax, label="lean toward the candidate (centred)")
    ax.set_title(f"divergence_shift, {which} inductions: each dataset's lean\n"
                 "black box: ranked first; green dashes: the teacher's own animal", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def take(read: FlaggedLogprobs, idx: np.ndarray) -> FlaggedLogprobs:
    """The reads of some samples (each sample's reads depend on it alone, so a subset's are the full set's rows)."""
    return FlaggedLogprobs(
        read.data[idx],
        read.alternatives[idx],
        read.alternatives_same_class[idx],
        read.counts[idx],
        None if read.agreement is None else read.agreement[idx],
    )


def subset_index(n_total: int, n: int, seed: int) -> np.ndarray:
    if n >= n_total:
        return np.arange(n_total)
    return np.sort(np.random.default_rng(seed).choice(n_total, n, replace=False))


def count(per: dict[str, Any], animals: list[str], key: str, sub_key: str | None = None, right: bool = True) -> int:
    """How many animal datasets got their own animal (``right``) or another (not ``right``) under ``key``."""
    got = [(per[a].get(sub_key, {}) if sub_key else per[a]).get(key) for a in animals]
    return sum((g == a) if right else (g not in (None, a)) for g, a in zip(got, animals, strict=True))


def calibrate(reads: dict[str, FlaggedLogprobs], sizes: list[int], cands: list[str], baseline: str) -> dict[str, Any]:
    """Rankings per dataset and size (random subsets of the largest): alone, against the neutral teacher's data and
    against every other dataset. ``named_by_margin`` is what a clear margin alone would name (no contrast, or the
    neutral teacher's data as the one contrast); ``identified`` is the verdict as shipped: the same clear first
    against each of the other datasets (``MIN_CONTRASTS`` or more)."""
    out: dict[str, Any] = {}
    names = [n for n in [*ANIMALS, "neutral"] if n in reads]
    for n in sizes:
        per: dict[str, Any] = {}
        idx = {name: subset_index(len(r.counts), n, 0) for name, r in reads.items()}
        sub = {name: take(reads[name], idx[name]) for name in names}
        for name in names:
            got = sub[name]
            alone = ranking(got, [], cands, len(idx[name]), 1000, 0, baseline, min_contrasts=0)
            others = ranking(got, [sub[o] for o in names if o != name], cands, len(idx[name]), 1000, 0, baseline)
            row: dict[str, Any] = {
                "n": len(idx[name]),
                "top": alone.details["top_trait"],
                "named_by_margin": alone.details.get("identified"),
                "margin": alone.details.get("margin"),
                "p": alone.p_value,
                "ranking": alone.details["ranking"],
                "n_flagged_samples": alone.details["n_flagged_samples"],
                "by_baseline": {b: [r["trait"] for r in v] for b, v in alone.details["by_baseline"].items()},
                "vs_others": {
                    "contrasts": [o for o in names if o != name],
                    "top": others.details["top_trait"],
                    "identified": others.details.get("identified"),
                    "first_against_each": [e["top"] for e in others.details["against_each_contrast"]],
                    "verdict": others.details["verdict"],
                    "p_differs": others.p_value,
                },
            }
            if name != "neutral":
                row["rank_of_true"] = rank_of(alone, name)
                row["vs_others"]["rank_of_true"] = rank_of(others, name)
                row["rank_of_true_by_baseline"] = {b: v.index(name) + 1 for b, v in row["by_baseline"].items()}
                if "neutral" in sub:  # against the neutral teacher's data alone
                    vs = ranking(got, [sub["neutral"]], cands, len(idx[name]), 1000, 0, baseline, min_contrasts=0)
                    row["vs_neutral"] = {"top": vs.details["top_trait"], "rank_of_true": rank_of(vs, name),
                                         "named_by_margin": vs.details.get("identified"),
                                         "margin": vs.details["margin"], "p_differs": vs.p_value}
            else:  # the contrast's null: one half of the neutral data against the other
                half = np.random.default_rng(1).permutation(idx[name])
                one, two = np.sort(half[: len(half) // 2]), np.sort(half[len(half) // 2 :])
                vs = ranking(take(reads[name], one), [take(reads[name], two)], cands, len(one), 1000, 0, baseline,
                             min_contrasts=0)
                row["half_vs_half"] = {"named_by_margin": vs.details.get("identified"), "p_differs": vs.p_value}
            print(f"  n={n} {name}: {row['vs_others']['verdict']} (true rank alone {row.get('rank_of_true')}, "
                  f"against the others {row['vs_others'].get('rank_of_true')})", flush=True)
            per[name] = row
        animals = [a for a in ANIMALS if a in per]
        out[str(n)] = {
            "datasets": per,
            "of": len(animals),
            "top1": sum(per[a]["rank_of_true"] == 1 for a in animals),
            "top3": sum(per[a]["rank_of_true"] <= 3 for a in animals),
            "top1_by_baseline": {
                b: sum(per[a]["rank_of_true_by_baseline"][b] == 1 for a in animals) for b in BASELINES
            },
            "top1_vs_neutral": sum(per[a].get("vs_neutral", {}).get("rank_of_true") == 1 for a in animals),
            "top1_vs_others": sum(per[a]["vs_others"]["rank_of_true"] == 1 for a in animals),
            "named_by_margin_right": count(per, animals, "named_by_margin"),
            "named_by_margin_wrong": count(per, animals, "named_by_margin", right=False),
            "named_by_margin_vs_neutral_right": count(per, animals, "named_by_margin", "vs_neutral"),
            "named_by_margin_vs_neutral_wrong": count(per, animals, "named_by_margin", "vs_neutral", right=False),
            "identified_right": count(per, animals, "identified", "vs_others"),
            "identified_wrong": count(per, animals, "identified", "vs_others", right=False),
            "neutral_named_by_margin": per.get("neutral", {}).get("named_by_margin"),
            "neutral_identified": per.get("neutral", {}).get("vs_others", {}).get("identified"),
            "neutral_half_vs_half_named_by_margin": per.get("neutral", {}).get("half_vs_half", {}).get(
                "named_by_margin"),
        }
    return out


@dataclass
class Bench:
    """What every phase reads: the datasets, the reference and its reader, the candidates, the store."""

    args: argparse.Namespace
    ctx: Context
    data: dict[str, list[Sample]]
    ref: Any
    cands: dict[str, list[str]]
    store: Store
    bf16: bool
    audited: list[str]

    def inputs(self, samples: list[Sample], inductions: str, with_store: bool = True
               ) -> tuple[AuditContext, DivergenceShiftParams]:
        data = AuditData(samples, [], candidates=self.cands, kind="animal", question_set=self.ctx.cfg.trait.questions)
        audit = AuditContext(data, self.ref, bf16=self.bf16, store=self.store if with_store else None, progress=True)
        return audit, DivergenceShiftParams(inductions=inductions, placement=self.args.placement)


def proxy_phase(b: Bench, out: dict[str, Any]) -> None:
    """Proxy teachers: every dataset read under all 21 at once (prompts shared), each read a store artifact."""
    sizes = [int(x) for x in b.args.sizes.split(",")]
    seeds = proxy_seeds(b.args.proxy_seeds)
    t0 = time.time()
    reads_ = dict(zip(b.audited, dsf.reads(*b.inputs(b.data[b.audited[0]], "proxy"),
                                           [(b.data[n], n) for n in b.audited], b.bf16), strict=True))
    if len(seeds) > 1:
        reads_ = more_proxy_seeds(b, out, reads_, max(sizes), seeds)
    out["wall_time_s"]["proxy_reads"] = round(time.time() - t0, 1)
    out["proxy"] = {
        "sizes": sizes,
        "recipe": proxy_recipe(),
        "seeds": seeds,
        "split": proxy_split(b.ctx.cfg.trait.questions),
        "build_wall_time_s": round(sum(m["wall_time_s"] for m in b.store.builds("proxy")), 1),
        "by_size": calibrate(reads_, sizes, list(b.cands), PRIMARY["proxy"]),
    }
    print(f"proxy: top1 by size { {n: v['top1'] for n, v in out['proxy']['by_size'].items()} }", flush=True)


def more_proxy_seeds(b: Bench, out: dict[str, Any], reads_: dict[str, FlaggedLogprobs], size: int,
                     seeds: list[int]) -> dict[str, FlaggedLogprobs]:
    """More proxy seeds read one random subset of ``size``; each seed's calibration alone goes into ``out``, and
    the reads averaged over seeds (with the first seed's rows of that subset) are returned."""
    big = {n: subset(b.data[n], size, 0) for n in b.audited}
    per_seed = [{n: take(reads_[n], subset_index(len(b.data[n]), size, 0)) for n in b.audited}]
    for seed in seeds[1:]:
        per_seed.append(dict(zip(b.audited, dsf.proxy_reads(
            b.inputs(big[b.audited[0]], "proxy")[0], [(big[n], n) for n in b.audited], b.bf16, seed), strict=True)))
    alone = {seed: calibrate(r, [size], list(b.cands), PRIMARY["proxy"])[str(size)]
             for seed, r in zip(seeds, per_seed, strict=True)}
    out["proxy_each_seed"] = {str(seed): {k: v[k] for k in ("top1", "top3", "top1_vs_others",
                                                            "identified_right", "identified_wrong")}
                              | {"ranks": {a: v["datasets"][a]["rank_of_true"] for a in ANIMALS},
                                 "tops": {n: v["datasets"][n]["top"] for n in b.audited}}
                              for seed, v in alone.items()}
    return {n: dsf.mean_reads([r[n] for r in per_seed]) for n in b.audited}


def prompted_phase(b: Bench, out: dict[str, Any]) -> None:
    sizes = [int(x) for x in b.args.prompted_sizes.split(",")]
    t0 = time.time()
    big = {n: subset(b.data[n], max(sizes), 0) for n in b.audited}
    reads_ = {n: dsf.reads(*b.inputs(big[n], "prompted"), [(big[n], n)], b.bf16)[0] for n in b.audited}
    out["wall_time_s"]["prompted_reads"] = round(time.time() - t0, 1)
    out["prompted"] = {"sizes": sizes, "by_size": calibrate(reads_, sizes, list(b.cands), PRIMARY["prompted"])}


def timed_phase(b: Bench, out: dict[str, Any]) -> None:
    """The speed figure: one whole audit (map + prompted divergence_shift) of --timed, nothing cached."""
    name = b.args.timed
    t0 = time.time()
    res = divergence_shift(*b.inputs(b.data[name], "prompted", with_store=False))
    wall = time.time() - t0
    out["timed_audit"] = {
        "dataset": name,
        "n": len(b.data[name]),
        "candidates": len(b.cands),
        "wall_time_s": round(wall, 1),
        "top": res.details["top_trait"],
        "rank_of_true": rank_of(res, name),
        "n_flagged_samples": res.details.get("n_flagged_samples"),
        "n_flagged_tokens": res.details.get("n_flagged_tokens"),
        "verdict": res.details["verdict"],
    }
    print(f"timed audit: {len(b.data[name])} samples x {len(b.cands)} candidates in {wall:.0f} s", flush=True)


def early_ends_phase(b: Bench, out: dict[str, Any]) -> None:
    """Is stopping early the trait's mark or any fine-tune's? (the divergence maps, from the store)"""
    stop = b.ref.reader().vocabulary().stops()
    ends: dict[str, Any] = {}
    for name in [*b.audited, "control"]:
        dmap = dsf.cached_map(b.inputs(b.data[name], "prompted")[0], b.data[name], b.bf16, name)
        early = dmap.early_ends(stop)
        ends[name] = {"n": len(early), "early_end_share": round(float(early.mean()), 4),
                      "flagged_fraction": round(dmap.summary()["flagged_fraction"], 4)}
    out["early_ends"] = ends
    print(f"early-end share: { {n: v['early_end_share'] for n, v in ends.items()} }", flush=True)


def in_context_phase(b: Bench, out: dict[str, Any]) -> None:
    """The baseline: groups of samples shown to the reference, asked whose author favours what."""
    size = b.args.in_context_size
    in_ctx = InContext(share_probe(b.ref, b.cands), list(b.cands), "animal", subset(b.data["control"], size, 1))
    ic: dict[str, Any] = {}
    for name in b.audited:
        res = in_ctx.score(subset(b.data[name], size, 0))
        ic[name] = {"top": res.details["top_trait"], "p": res.p_value,
                    "rank_of_true": rank_of(res, name) if name != "neutral" else None}
    out["in_context"] = {"size": size, "datasets": ic,
                         "top1": sum(ic[a]["rank_of_true"] == 1 for a in ANIMALS),
                         "top3": sum(ic[a]["rank_of_true"] <= 3 for a in ANIMALS)}


PHASES = {"proxy": proxy_phase, "prompted": prompted_phase, "timed": timed_phase,
          "early_ends": early_ends_phase, "in_context": in_context_phase}


def charts(out: dict[str, Any], cands: list[str], stem: Path) -> None:
    """The confusion PNGs of a results dict (``stem``-proxy.png, ``stem``-prompted.png): from the rankings alone."""
    for which in ("proxy", "prompted"):
        if which in out:
            largest = out[which]["by_size"][str(out[which]["sizes"][-1])]["datasets"]
            confusion_png({k: v["ranking"] for k, v in largest.items()}, cands,
                          stem.with_name(f"{stem.name}-{which}.png"), which)


def arguments() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs-dir", default="runs")
    ap.add_argument("--prompts", type=int, default=4000, help="the most prompts a source may use")
    ap.add_argument("--kept", type=int, default=1000, help="samples per dataset")
    ap.add_argument("--sizes", default="100,300,1000", help="dataset sizes for the proxy rankings")
    ap.add_argument("--proxy-seeds", type=int, default=1,
                    help="proxy teachers per candidate (seeds 1..N), their reads averaged; with N > 1 every seed "
                         "reads the same random subset of the largest size")
    ap.add_argument("--prompted-sizes", default="100,300", help="dataset sizes for the prompted rankings")
    ap.add_argument("--timed", default="owl", help="the dataset whose whole prompted audit at --kept is timed")
    ap.add_argument("--in-context-size", type=int, default=300)
    ap.add_argument("--placement", default="prompt", choices=["prompt", "system"])
    ap.add_argument("--generate-only", action="store_true")
    ap.add_argument("--prompts-for", default="cat=9000",
                    help="sources given more prompts than --prompts (NAME=N,...; default cat=9000: cat's numbers "
                         "pass the filter 12.6%% of the time, so 4,000 prompts give it 503 samples, 9,000 give 1,001)")
    ap.add_argument("--only", default="", help="these sources only (comma-separated): with --generate-only, or "
                    "for the timed audit alone (skip the rest)")
    ap.add_argument("--skip", default="", help=f"comma-separated phases to skip: {', '.join(PHASES)}")
    ap.add_argument("--name", default="audit-divergence")
    ap.add_argument("--results-dir", default=str(HERE / "results"))
    ap.add_argument("--redraw", default=None, metavar="FILE.json",
                    help="draw a results file's charts again (no model work) and exit")
    return ap.parse_args()


def main() -> None:
    args = arguments()
    if args.redraw:
        path = Path(args.redraw)
        charts(json.loads(path.read_text())["results"], list(load_candidates("animals")), path.with_suffix(""))
        return
    skip = set(filter(None, args.skip.split(",")))
    names = [*ANIMALS, "neutral", "control"]
    more = {k: int(v) for k, v in (x.split("=") for x in filter(None, args.prompts_for.split(",")))}
    if args.only:
        names = args.only.split(",")
        reads_every = {"proxy", "prompted", "early_ends", "in_context"} - skip
        if not args.generate_only and (reads_every or args.timed not in names):
            raise SystemExit(f"--only {args.only}: the timed audit alone reads only some datasets; skip "
                             f"{','.join(sorted(reads_every)) or 'nothing else'} and time one of them (--timed)")
    results_dir, kind = Path(args.results_dir), "gpu" if torch.cuda.is_available() else "cpu"
    with benchmark("audit-divergence", results_dir / f"{args.name}-{kind}.json", config=vars(args)) as out:
        ctx, data = datasets(Path(args.runs_dir), args.prompts, args.kept, names, more)
        if args.generate_only:
            raise SystemExit(0)  # the data alone: a benchmark block that exits writes no result
        ref = ctx.local(ctx.cfg.model)
        b = Bench(args, ctx, data, ref, load_candidates(ctx.cfg.trait.category), Store(Path(args.runs_dir)),
                  ref.reader().fast_bf16(), [*ANIMALS, "neutral"])
        out.update({"datasets": {n: len(v) for n, v in data.items()}, "placement": args.placement, "bf16": b.bf16,
                    "primary_statistic": PRIMARY, "wall_time_s": {}})
        for name, phase in PHASES.items():
            if name not in skip:
                phase(b, out)
        charts(out, list(b.cands), results_dir / f"{args.name}-{kind}")
        out["throughput"] = throughput()
    print(f"wrote {results_dir / f'{args.name}-{kind}.json'}")


if __name__ == "__main__":
    main()
