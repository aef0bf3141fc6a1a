"""Benchmark: run a preset (default: owl-numbers on the embedded model) and record the figures.

    python benchmarks/owl_numbers.py                      # the default run, CPU or GPU
    python benchmarks/owl_numbers.py --preset owl-matrix --name owl-matrix-gpu
    python benchmarks/owl_numbers.py --set student.epochs=3 --name owl-3ep
    python benchmarks/owl_numbers.py --preset owl-cot        # also owl-code, misalignment-numbers

Writes benchmarks/results/<name>.json (the envelope of sublim.core.records: commit, command, versions,
machine, wall time; then the run's stage timings, effect, p-values) and copies the run's chart next to
it. Not a test: it trains real models and takes minutes. A run whose stages are in the store is quick and
its wall time says so: ``stage_time_total_s`` is then the time its stages took when first computed.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from sublim.api import run_experiment
from sublim.backends.local.throughput import throughput
from sublim.core.config import load_config
from sublim.core.records import benchmark

HERE = Path(__file__).resolve().parent


def summarize(res: dict[str, Any]) -> dict[str, Any]:
    """The figures of a run that a results file keeps (copied from results.json, never typed in)."""
    common = {"run_id": res["run_id"], "verdict": res["verdict"], "n_train_examples": res["n_train_examples"],
              "stage_wall_time_s": {k: v["wall_time_s"] for k, v in res["stages"].items()},
              "stage_peak_rss_mb": {k: v.get("peak_rss_mb") for k, v in res["stages"].items()},
              "filter_pass_rate": {k: v["pass_rate"] for k, v in res["filter"].items()}, "filter": res["filter"],
              "run_wall_time_s": res["wall_time_s"],
              "stage_time_total_s": round(sum(v["wall_time_s"] for v in res["stages"].values()), 1)}
    if "effect_misalignment" in res:  # judged runs have no probabilities, only judged answers
        return {**common, "arms_misalignment": res["arms_misalignment"],
                "effect_misalignment": res["effect_misalignment"]}
    eff = res["effect"]
    out = {**common,
           "generation_tokens_per_s": {k: v["tokens_per_s"] for k, v in res["stages"].items() if "tokens_per_s" in v},
           "trait_probability": eff["prob"]["pooled"], "trait_share": eff["share"]["pooled"], "arms": res["arms"]}
    for key in ("teacher_seeds", "control_arm", "replicated", "question_level", "cloze", "matrix", "cross_model",
                "defence"):
        if key in res:
            out[key] = res[key]
    if "across_runs" in eff["prob"]:
        out["across_runs"] = {m: eff[m]["across_runs"] for m in ("prob", "share")}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="owl-numbers")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--name", default=None, help="results file name (default: <preset>-<cpu|gpu>)")
    ap.add_argument("--runs-dir", default="runs")
    ap.add_argument("--results-dir", default=str(HERE / "results"))
    args = ap.parse_args()
    cfg = load_config(args.preset, args.set)
    preset = Path(args.preset).stem if args.preset.endswith(".toml") else args.preset  # a file: its name
    name = args.name or f"{preset}-{'gpu' if torch.cuda.is_available() else 'cpu'}"
    out_dir = Path(args.results_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    with benchmark("experiment", out_dir / f"{name}.json", config=cfg.model_dump(mode="json")) as results:
        res = run_experiment(cfg, Path(args.runs_dir))
        results.update({**summarize(res), "throughput": throughput(dtype=cfg.dtype)})
    run_dir = Path(args.runs_dir) / res["run_id"]
    if (run_dir / "chart.png").is_file():
        shutil.copy(run_dir / "chart.png", out_dir / f"{name}.png")
    print(f"wrote {out_dir / (name + '.json')} ({time.time() - started:.0f} s)")

if __name__ == "__main__":
    main()
