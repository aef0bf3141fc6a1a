"""Benchmark: does replacing the divergent digits cut the transfer to SFT students? (the defence table)

    python benchmarks/defence_divergent.py      # none, replace_divergent(_rounds), reference_ends, …
    python benchmarks/defence_divergent.py --seeds 0,1,2,3,4 --kept 400

The default owl experiment with SFT students (a defender holds only text, so no distillation), its data defended
the same way for both arms, each defence with every seed; the trained run is the unit. First, is the undefended
transfer significant across seeds (the owl-share gain of the trait student over the control student, per seed;
a one-sided t-test over seeds and the t interval)? Then, per defence, the gain that remains and the cut
1 - gain(defence) / gain(none) with a bootstrap interval over seeds, and what the defence kept (rows, tokens).
Writes benchmarks/results/defence-divergent-<cpu|gpu>.json and a PNG.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import t as student_t

from sublim.api import run_experiment
from sublim.backends.local.throughput import throughput
from sublim.core.config import load_config
from sublim.core.files import write_json
from sublim.core.records import envelope, git_state

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


def cut(defended: np.ndarray, none: np.ndarray, n_boot: int = 5000, seed: int = 0) -> dict[str, float]:
    """1 - mean(defended gain) / mean(undefended gain), with a bootstrap over seeds (both arms resampled)."""
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        d, u = defended[rng.integers(0, len(defended), len(defended))], none[rng.integers(0, len(none), len(none))]
        if u.mean() > 0:
            boots.append(1 - d.mean() / u.mean())
    value = 1 - defended.mean() / none.mean() if none.mean() > 0 else float("nan")
    return {"value": float(value), "low": float(np.quantile(boots, 0.025)) if boots else float("nan"),
            "high": float(np.quantile(boots, 0.975)) if boots else float("nan")}


def chart(rows: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(rows)
    fig, axes = plt.subplots(1, 2, figsize=(2.4 + 2.4 * len(names), 3.8))
    for ax, key, label in zip(axes, ("share_gain", "prob_gain"), ("owl share", "owl probability"), strict=True):
        for i, n in enumerate(names):
            g = rows[n][key]
            ax.bar(i, g["mean"], color="tab:orange" if n == "none" else "tab:blue", alpha=0.8)
            ax.errorbar(i, g["mean"], yerr=[[g["mean"] - g["low"]], [g["high"] - g["mean"]]], color="black",
                        capsize=4)
            ax.scatter([i] * len(rows[n][f"{key}_per_seed"]), rows[n][f"{key}_per_seed"], color="black", s=10,
                       zorder=3)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xticks(range(len(names)), names, rotation=15, fontsize=8)
        ax.set_ylabel(f"{label} gain over the control student", fontsize=8)
    fig.suptitle("transfer left after each defence (SFT students; dots: seeds; bars: 95% t interval)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


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
    args = ap.parse_args()
    started, git = time.time(), git_state()
    seeds = [int(s) for s in args.seeds.split(",")]
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
    none = np.array(rows["none"]["share_gain_per_seed"]) if "none" in rows else None
    if none is not None:
        for d, r in rows.items():
            if d != "none":
                r["cut_share"] = cut(np.array(r["share_gain_per_seed"]), none)
                r["cut_prob"] = cut(np.array(r["prob_gain_per_seed"]), np.array(rows["none"]["prob_gain_per_seed"]))
    out = {"seeds": seeds, "kept": args.kept, "fraction": args.fraction, "defences": rows,
           "undefended_significant": bool(none is not None and rows["none"]["share_gain"]["low"] > 0),
           "throughput": throughput()}
    results_dir = Path(args.results_dir)
    kind = "gpu" if torch.cuda.is_available() else "cpu"
    chart(rows, results_dir / f"{args.name}-{kind}.png")
    write_json(results_dir / f"{args.name}-{kind}.json",
               envelope("defence-divergent", out, config={"seeds": seeds, "kept": args.kept, "set": args.set},
                        started=started, git=git))
    print(f"wrote {results_dir / f'{args.name}-{kind}.json'}")


if __name__ == "__main__":
    main()
