"""Benchmark: a sweep on the embedded model (default: examples/sweeps/animals.toml: owl, dolphin and eagle, each
with the base preset's three trait and three neutral teachers), with its report, chart and matrix.

    python benchmarks/sweep.py                                   # Ray when installed (a local cluster)
    python benchmarks/sweep.py --executor local
    python benchmarks/sweep.py --sweep my-sweep.toml --set 'set=["arms.teacher_seeds=[0,1]"]'

Writes benchmarks/results/sweep-<name>-<cpu|gpu>.json (the envelope, the sweep's data, every run's verdict
and stage times, and the throughput of the model work, the Ray workers' included) and the sweep's
chart.png and matrix.png beside it.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import torch

from sublim.api import run_sweep
from sublim.backends.local.throughput import throughput
from sublim.core.records import benchmark
from sublim.sweep import load_sweep, sweep_dir

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sweep", default=str(HERE.parent / "examples" / "sweeps" / "animals.toml"))
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--executor", default="auto")
    ap.add_argument("--cpus-per-task", type=int, default=1)
    ap.add_argument("--runs-dir", default="runs")
    ap.add_argument("--results-dir", default=str(HERE / "results"))
    args = ap.parse_args()
    t0 = time.time()
    path = Path(args.sweep)
    sweep = load_sweep(path, args.set)
    name = f"sweep-{sweep.name}-{'gpu' if torch.cuda.is_available() else 'cpu'}"
    dest = Path(args.results_dir)
    with benchmark("sweep", dest / f"{name}.json", config=sweep.model_dump(mode="json")) as out:
        out.update(run_sweep(sweep, Path(args.runs_dir), executor=args.executor, cpus_per_task=args.cpus_per_task,
                             where=path.resolve().parent, progress=False))
        dest.mkdir(parents=True, exist_ok=True)
        src = sweep_dir(Path(args.runs_dir), sweep)
        for png in ("chart", "matrix"):
            if (src / f"{png}.png").is_file():
                shutil.copy(src / f"{png}.png", dest / f"{name}-{png}.png")
        out["throughput"] = throughput()
    print(f"wrote {dest / (name + '.json')} ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
