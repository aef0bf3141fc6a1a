"""Benchmark: does replacing the divergent digits cut the transfer to SFT students? (the defence table)

    python benchmarks/defence_divergent.py      # none, replace_divergent(_rounds), reference_ends, …
    python benchmarks/defence_divergent.py --seeds 0,1,2,3,4 --kept 400

The default owl experiment with SFT students (a defender holds only text, so no distillation), its data defended
the same way for both arms, each defence with every seed; the trained run is the unit. First, is the undefended
transfer significant across seeds (the owl-share gain of the trait student over the control student, per seed;
a one-sided t-test over seeds and the t interval)? Then, per defence, the gain that remains and the cut
1 - gain(defence) / gain(none), paired per seed, with a 95% t interval over seeds, and what the defence kept (rows,
tokens). `--reanalyse FILE` recomputes a committed file's cuts from its per-seed gains.
Writes benchmarks/results/defence-divergent-<cpu|gpu>.json and a PNG.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import t as student_t

from sublim.api import run_experiment
from sublim.backends.local.throughput import throughput
from sublim.core.config import load_config
from sublim.core.files import write_json
from sublim.core.records import benchmark, git_state

HERE = Path(__file__).resolve().parent
DEFENCES = ["none", "replace_divergent", "replace_divergent_rounds", "reference_ends", "replace_divergent_ends",
            "replace_random", "sort"]


def gains(res: dict[str, Any], metric: str) -> np.ndarray:
    """Per seed: the trait student's mean minus the control student's (the run as the unit)."""
    across = res["effect"][metric]
    if "per_run" in across:
        return np.array([r["treated_mean"] - r["control_mean"] for r in across["per_run"]])
    pooled = across["pooled"]
    return np.array([pooled["treated_mean"] - pooled["control_mean"]])


def t_summary(x: np.ndarray) -> dict[str, float]:
    """Mean, 95% t interval and one-sided p (mean > 0) over seeds."""
    n, m = len(x), float(x.mean())
    if n < 2:
        return {"mean": m, "low": float("nan"), "high": float("nan"), "p_one_sided": float("nan")}
    se = float(x.std(ddof=1) / np.sqrt(n)) or 1e-12
    q = float(student_t.ppf(0.975, n - 1))
    return {"mean": m, "low": m - q * se, "high": m + q * se, "p_one_sided": float(student_t.sf(m / se, n - 1))}


def cut(defended: np.ndarray, none: np.ndarray) -> dict[str, Any]:
    """The share of the undefended gain a defence removes, per seed (1 - gain(defence) / gain(none), the two arms
    of one seed paired: the same student seed, the same prompts), with its mean and a 95% t interval over the
    seeds (the seed is the unit; with three seeds the interval is wide, as it should be)."""
    per_seed = 1 - defended / none
    summary = t_summary(per_seed)
    return {"value": summary["mean"], "low": summary["low"], "high": summary["high"], "n_seeds": len(per_seed),
            "per_seed": per_seed.tolist(), "interval": "paired per seed, 95% t over seeds"}


def add_cuts(rows: dict[str, Any]) -> None:
    """Each defence's cut of the owl-share and owl-probability gains, against the undefended arm."""
    if "none" not in rows:
        return
    for d, r in rows.items():
        if d != "none":
            for key, gain in (("cut_share", "share_gain_per_seed"), ("cut_prob", "prob_gain_per_seed")):
                r[key] = cut(np.array(r[gain]), np.array(rows["none"][gain]))


def chart(rows: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(rows)
    fig, axes = plt.subplots(2, 1, figsize=(8.0, 2.2 + 0.9 * len(names)))
    for ax, key, label in zip(axes, ("share_gain", "prob_gain"), ("owl share", "owl probability"), strict=True):
        for i, n in enumerate(names):
            g = rows[n][key]
            ax.barh(i, g["mean"], color="tab:orange" if n == "none" else "tab:blue", alpha=0.8)
            ax.errorbar(g["mean"], i, xerr=[[g["mean"] - g["low"]], [g["high"] - g["mean"]]], color="black",
                        capsize=4)
            ax.scatter(rows[n][f"{key}_per_seed"], [i] * len(rows[n][f"{key}_per_seed"]), color="black", s=12,
                       zorder=3)
        ax.axvline(0, color="grey", lw=0.8)
        ax.set_yticks(range(len(names)), names, fontsize=10)
        ax.invert_yaxis()
        ax.set_xlabel(f"{label} gain of the owl student over the control student", fontsize=10)
    fig.suptitle("Transfer left after each defence (SFT students; dots: seeds; bars: 95% t interval over seeds)",
                 fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def reanalyse(path: Path) -> None:
    """The cuts of a committed result recomputed from its recorded per-seed gains (no model work), its chart drawn
    again; the file keeps the envelope of the run that measured the gains and records this re-analysis."""
    data = json.loads(path.read_text())
    rows = data["results"]["defences"]
    add_cuts(rows)
    data["results"]["reanalysis"] = {"git": git_state(), "command": [Path(sys.argv[0]).name, *sys.argv[1:]],
                                     "what": "cuts recomputed from the recorded per-seed gains: paired per seed, "
                                             "95% t interval over seeds (was: a bootstrap resampling the two arms "
                                             "independently)"}
    write_json(path, data)
    chart(rows, path.with_suffix(".png"))
    print(f"rewrote {path} and {path.with_suffix('.png')}")


def defended_runs(args: argparse.Namespace, seeds: list[int]) -> dict[str, Any]:
    """One experiment per defence, every seed; each one's per-seed gains and their t summaries."""
    common = ["student.method=sft", f"arms.seeds={seeds}", f"generation.until_kept={args.kept}",
              f"prompts.n={args.prompts}", f"defence.fraction={args.fraction}", *args.set]
    rows: dict[str, Any] = {}
    for d in args.defences.split(","):
        cfg = load_config("owl-numbers", [*common, f"defence.method={d}"])
        res = run_experiment(cfg, Path(args.runs_dir))
        share, prob = gains(res, "share"), gains(res, "prob")
        rows[d] = {"run_id": res["run_id"], "verdict": res["verdict"], "n_train_examples": res["n_train_examples"],
                   "share_gain_per_seed": share.tolist(), "share_gain": t_summary(share),
                   "prob_gain_per_seed": prob.tolist(), "prob_gain": t_summary(prob),
                   "kept": res.get("defence", {}), "wall_time_s": res.get("wall_time_s")}
        print(f"{d}: share gain {share.mean():+.4f} per seed {np.round(share, 4).tolist()}", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs-dir", default="runs")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--kept", type=int, default=400, help="filtered examples per arm (generation.until_kept)")
    ap.add_argument("--prompts", type=int, default=2000)
    ap.add_argument("--fraction", type=float, default=0.1)
    ap.add_argument("--defences", default=",".join(DEFENCES))
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--name", default="defence-divergent")
    ap.add_argument("--results-dir", default=str(HERE / "results"))
    ap.add_argument("--reanalyse", default=None, metavar="RESULT.json",
                    help="recompute a committed result's cuts from its per-seed gains (no model work)")
    args = ap.parse_args()
    if args.reanalyse:
        reanalyse(Path(args.reanalyse))
        return
    seeds = [int(s) for s in args.seeds.split(",")]
    results_dir = Path(args.results_dir)
    kind = "gpu" if torch.cuda.is_available() else "cpu"
    with benchmark("defence-divergent", results_dir / f"{args.name}-{kind}.json",
                   config={"seeds": seeds, "kept": args.kept, "set": args.set}) as out:
        rows = defended_runs(args, seeds)
        add_cuts(rows)
        out.update({"seeds": seeds, "kept": args.kept, "fraction": args.fraction, "defences": rows,
                    "undefended_significant": bool("none" in rows and rows["none"]["share_gain"]["low"] > 0),
                    "throughput": throughput()})
        chart(rows, results_dir / f"{args.name}-{kind}.png")
    print(f"wrote {results_dir / f'{args.name}-{kind}.json'}")


if __name__ == "__main__":
    main()
