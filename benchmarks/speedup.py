"""Benchmark: the default experiment with an earlier commit's code and with this one, on the same machine.

    python benchmarks/speedup.py --baseline 7066260 --keep-new   # float32 main before bf16, then HEAD (auto: bf16)
    python benchmarks/speedup.py                       # baseline c550c73 (before issue 16), then HEAD
    python benchmarks/speedup.py --baseline <commit>
    python benchmarks/speedup.py --keep-new            # HEAD's side is also the committed owl-numbers result
    python benchmarks/speedup.py --from-results BASE.json NEW.json   # two owl_numbers.py files already made
                                                                     # one after the other on this machine
    python benchmarks/speedup.py --baseline 7066260 --new-set arms.teacher_seeds=null --new-set arms.neutral=false \
        --new-set evaluation.cloze=false    # HEAD on the baseline's plan: one teacher, base-data control, no cloze

Each side runs ``benchmarks/owl_numbers.py`` of its own commit (the baseline from a git worktree, its
``src`` first on the path) with a fresh store, one after the other, nothing else running. Writes
benchmarks/results/speedup-<cpu|gpu>.json: both wall times and their ratio, the stage times, the effect
of each side and the filter's reject reasons before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sublim.core.records import benchmark

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def run_side(code_root: Path, work: Path, name: str, keep_in: Path | None = None,
             sets: list[str] | None = None) -> dict[str, Any]:
    """``owl_numbers.py`` of the tree at ``code_root`` with its own store (and config overrides ``sets``); its
    results file (also written to ``keep_in``, with its chart, when given), with the process's own peak
    resident memory and each arm's per-question trait probabilities (read from the run's evaluation artifacts)."""
    env = {**os.environ, "PYTHONPATH": str(code_root / "src")}
    out = keep_in or work / f"results-{name}"
    runs = work / f"runs-{name}"
    overrides = [arg for s in sets or [] for arg in ("--set", s)]
    proc = subprocess.Popen([sys.executable, str(code_root / "benchmarks" / "owl_numbers.py"), "--runs-dir",
                             str(runs), "--results-dir", str(out), *overrides], env=env, cwd=code_root)
    _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak memory, not the largest child's so far
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"the {name} side failed (exit {proc.returncode})")
    device = "gpu" if torch.cuda.is_available() else "cpu"
    res = dict(json.loads((out / f"owl-numbers-{device}.json").read_text()))
    res["peak_rss_mb"] = side_peak_mb(res, usage.ru_maxrss / 1024)
    res["per_question"] = per_question(runs, res)
    return res


def side_peak_mb(res: dict[str, Any], waited_mb: float) -> float:
    """A side's peak resident memory: the larger of what ``wait4`` saw and the process peak its own envelope kept.
    Code that resets the kernel's high-water mark at each stage (sublim.core.peak) lowers what ``wait4`` reports
    to the peak since the last reset; its envelope keeps the process peak across the resets."""
    own = (res.get("peak_memory_mb") or {}).get("self")
    return round(max(waited_mb, own or 0.0), 1)


def per_question(runs: Path, res: dict[str, Any]) -> dict[str, list[float]]:
    """Each evaluated model's trait probability per question, by its evaluation stage's label."""
    run = json.loads((runs / res["results"]["run_id"] / "results.json").read_text())
    target = res["config"]["trait"]["target"]
    out = {}
    for label, stage in run["stages"].items():
        if label.startswith("evaluate/"):
            rows = (Path(stage["path"]) / "per_question.jsonl").read_text().splitlines()
            out[label] = [json.loads(r)["prob"][target] for r in rows]
    return out


def side(res: dict[str, Any]) -> dict[str, Any]:
    r = res["results"]
    return {"commit": res["git"]["commit"], "wall_time_s": r["run_wall_time_s"], "verdict": r["verdict"],
            "n_train_examples": r["n_train_examples"], "stage_wall_time_s": r["stage_wall_time_s"],
            "filter": r["filter"], "trait_probability": r.get("trait_probability"),
            "trait_share": r.get("trait_share"), "throughput": r.get("throughput"),
            "peak_rss_mb": res.get("peak_rss_mb"), "dtype": res["config"].get("dtype")}


def parity(base: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """Do the two sides measure the same thing? The verdict's first word, each effect inside the other's interval
    (probability ratio and share ratio), and the per-question trait probabilities of every arm both evaluated
    correlated (Pearson, over the questions)."""
    out: dict[str, Any] = {"same_verdict": base["verdict"].split(":")[0] == new["verdict"].split(":")[0]}
    for m in ("trait_probability", "trait_share"):
        a, b = base[m]["ratio"], new[m]["ratio"]
        out[m] = {"baseline": a, "new": b, "new_in_baseline_ci": a["low"] <= b["value"] <= a["high"],
                  "baseline_in_new_ci": b["low"] <= a["value"] <= b["high"]}
    return out


def correlations(base: dict[str, Any], new: dict[str, Any]) -> dict[str, float]:
    bq, nq = base.get("per_question", {}), new.get("per_question", {})
    pairs = {k: (bq[k], nq[k]) for k in bq
             if k in nq and len(bq[k]) == len(nq[k])}
    return {k: round(float(np.corrcoef(a, b)[0, 1]), 4) for k, (a, b) in pairs.items()}


def both_sides(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """The two owl_numbers.py results: read from --from-results, or run now (the baseline from a worktree)."""
    if args.from_results:
        base, new = (json.loads(Path(p).read_text()) for p in args.from_results)
        return base, new
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        tree = work / "baseline"
        subprocess.run(["git", "worktree", "add", "-f", str(tree), args.baseline], check=True, cwd=ROOT)
        try:
            base = run_side(tree, work, "baseline")
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], check=False, cwd=ROOT)
        new = run_side(ROOT, work, "new", Path(args.results_dir) if args.keep_new else None, args.new_set)
    return base, new


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", default="c550c73")
    ap.add_argument("--from-results", nargs=2, metavar=("BASE", "NEW"))
    ap.add_argument("--results-dir", default=str(HERE / "results"))
    ap.add_argument("--keep-new", action="store_true",
                    help="also keep HEAD's run as the results dir's owl-numbers-<cpu|gpu>.json (and its chart)")
    ap.add_argument("--new-set", action="append", default=[], metavar="KEY=VALUE",
                    help="a config override for HEAD's side only (e.g. the baseline's plan on today's code)")
    args = ap.parse_args()
    name = f"speedup-{'gpu' if torch.cuda.is_available() else 'cpu'}"
    out = Path(args.results_dir) / f"{name}.json"
    config = {"baseline": args.baseline, "new_set": args.new_set}
    with benchmark("speedup", out, config=config) as results:
        base, new = both_sides(args)
        b, n = side(base), side(new)
        results.update({
            "baseline": b, "new": n, "speedup": round(b["wall_time_s"] / n["wall_time_s"], 3),
            "reject_reasons": {"before": {k: v["reject_reasons"] for k, v in b["filter"].items()},
                               "after": {k: v["reject_reasons"] for k, v in n["filter"].items()}},
            "pass_rate": {"before": {k: v["pass_rate"] for k, v in b["filter"].items()},
                          "after": {k: v["pass_rate"] for k, v in n["filter"].items()}},
            "throughput": n["throughput"],
            "parity": {**parity(b, n), "per_question_correlation": correlations(base, new)},
        })
    print(f"speedup ×{results['speedup']} ({b['wall_time_s']:.0f} s → {n['wall_time_s']:.0f} s); wrote {out}")


if __name__ == "__main__":
    main()
