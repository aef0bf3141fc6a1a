"""Benchmark: run the toy presets (aux-logit MLP experiment) and record figures and wall time.

    python benchmarks/toy.py                                  # toy-mnist and toy-digits
    python benchmarks/toy.py --sweeps                         # ... and both sweep presets
    python benchmarks/toy.py --presets toy-digits --set runtime.threads=1
    python benchmarks/toy.py --mnist /path/to/mnist-10k.npz

Writes benchmarks/results/<preset>-<cpu|gpu>.json (wall time, machine, CPU load, accuracies with
95% CIs, theory cosines, sweeps) and copies the run's PNGs next to it. Every run starts fresh
(an existing results.json in its run directory is removed first) so the wall time is real.
Not a test: it trains hundreds of small models and takes minutes.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from sublim.api import run_toy
from sublim.backends.local.throughput import throughput
from sublim.core.records import benchmark
from sublim.toy import ToyConfig, load_toy_config
from sublim.toy.experiment import idle_cores

HERE = Path(__file__).resolve().parent
DEFAULT_MNIST = "/work/shared/data/mnist-10k.npz"


def _cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def summarize(res: dict[str, Any], wall: float, cpu: float, idle: float | None) -> dict[str, Any]:
    arms = {k: {"mean": v["mean"], "accuracy": v["accuracy"]} for k, v in res["arms"].items()}
    out: dict[str, Any] = {
        "preset": res["name"],
        "summary": res["summary"],
        "wall_time_s": round(wall, 1),
        "run_wall_time_s": res["wall_time_s"],
        "phase_wall_time_s": res["phase_wall_time_s"],
        "process_cpu_time_s": round(cpu, 1),
        "idle_cores_at_start": None if idle is None else round(idle, 2),
        "torch_threads": res["torch_threads"],
        "note": ("The machine is shared: idle_cores_at_start < cpu_count, or process CPU time "
                 "well under threads x wall time, means other work slowed this run."),
        "data": res["data"],
        "architecture": res["architecture"],
        "arms": arms,
        "comparison": res["comparison"],
        "final_cosine": {k: v["mean"] for k, v in res["final_cosine"].items()},
        "machine": res["machine"],
        "versions": res["versions"],
        "config_hash": res["config_hash"],
        "config": res["config"],
    }
    if "theory" in res:
        th = res["theory"]
        out["theory"] = {"steps": th["steps"][-1], "cosine_at_end": th["cosine_at_end"],
                         "cosine_at_step_1": {k: v["mean"][0] for k, v in th["cosine"].items()},
                         "min_cosine_student_aux": min(th["cosine"]["student-aux"]["mean"])}
    if "sweeps" in res:
        out["sweeps"] = {
            key: {"values": s["values"],
                  **{arm: [e["mean"] for e in s[arm]] for arm in ("teacher", "student-aux",
                                                                 "cross-aux")
                     if isinstance(s.get(arm), list)}}
            for key, s in res["sweeps"].items()}
    return out


def device_of(cfg: ToyConfig) -> str:
    """'gpu' or 'cpu': where ``run_toy`` trains (runtime.device; 'auto' is the GPU when torch sees one)."""
    on_gpu = cfg.runtime.device == "cuda" or (cfg.runtime.device == "auto" and torch.cuda.is_available())
    return "gpu" if on_gpu else "cpu"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="*", default=None,
                    help="toy presets to run (default: toy-mnist toy-digits)")
    ap.add_argument("--sweeps", action="store_true", help="also run the *-sweeps presets")
    ap.add_argument("--mnist", default=DEFAULT_MNIST, help="MNIST .npz or IDX path")
    ap.add_argument("--set", action="append", default=[], help="extra override for every run")
    ap.add_argument("--runs-dir", default="runs")
    ap.add_argument("--results-dir", default=str(HERE / "results"))
    ap.add_argument("--suffix", default=None, help="results name suffix (default: cpu or gpu)")
    ap.add_argument("-q", "--quiet", action="store_true")
    args = ap.parse_args()
    presets = args.presets or ["toy-mnist", "toy-digits"]
    if args.sweeps:
        presets += [f"{p}-sweeps" for p in presets if not p.endswith("-sweeps")]
    results_dir = Path(args.results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    for preset in presets:
        overrides = list(args.set)
        if "mnist" in preset:
            if not Path(args.mnist).exists():
                print(f"skip {preset}: no MNIST file at {args.mnist} (pass --mnist PATH)")
                continue
            overrides.insert(0, f"data.path={args.mnist}")
        cfg = load_toy_config(preset, overrides)
        out = Path(args.runs_dir) / "toy-bench" / f"{preset}-{cfg.config_hash()[:10]}"
        (out / "results.json").unlink(missing_ok=True)
        idle = idle_cores()
        name = f"{preset}-{args.suffix or device_of(cfg)}"
        with benchmark("toy", results_dir / f"{name}.json", config=cfg.model_dump(mode="json")) as figures:
            cpu0, t0 = _cpu_seconds(), time.perf_counter()
            res = run_toy(cfg, out, progress=not args.quiet)
            wall, cpu = time.perf_counter() - t0, _cpu_seconds() - cpu0
            assert res["device"].startswith("cuda") == (device_of(cfg) == "gpu"), res["device"]
            figures.update(summarize(res, wall, cpu, idle))
            figures["throughput"] = throughput()
        for png in ("chart", "theory", "sweeps"):
            if (out / f"{png}.png").is_file():
                shutil.copy(out / f"{png}.png", results_dir / f"{name}-{png}.png")
        print(f"{name}: {wall:.1f} s wall, {cpu:.1f} s CPU, idle cores at start "
              f"{'?' if idle is None else f'{idle:.2f}'}\n  {res['summary']}")


if __name__ == "__main__":
    main()
