"""Run a sweep: every run of the grid, in this process or on a Ray cluster, then the sweep's data.

Both executors call the same runner over the same store, so a stage two runs share (one teacher, one
control dataset) is computed once, and a killed or repeated sweep resumes from what is finished.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from sublim.core.errors import SublimError
from sublim.core.files import check_writable, inside, write_json
from sublim.core.records import machine_info
from sublim.experiment.runner import run_experiment
from sublim.sweep.config import MAX_RUNS, SweepConfig, SweepRun, expand
from sublim.sweep.data import sweep_data
from sublim.sweep.ray_executor import run_on_ray, run_or_error

EXECUTORS = ("auto", "local", "ray")
RAY_HINT = "pip install 'sublim[ray]'"


def sweep_dir(runs_dir: Path, sweep: SweepConfig) -> Path:
    return inside(runs_dir, Path(runs_dir) / "sweeps" / f"{sweep.name}-{sweep.sweep_hash()[:10]}", "sweep folder")


def pick_executor(executor: str, echo: Callable[[str], None]) -> str:
    if executor not in EXECUTORS:
        raise SublimError(f"unknown executor {executor!r}: choose one of {', '.join(EXECUTORS)}")
    has_ray = importlib.util.find_spec("ray") is not None
    if executor == "ray" and not has_ray:
        raise SublimError(f"--executor ray needs Ray, which is not installed: {RAY_HINT}")
    if executor == "auto":
        if not has_ray:
            echo(f"Ray is not installed: running the runs one after another in this process ({RAY_HINT} for the "
                 "parallel executor)")
            return "local"
        return "ray"
    return executor


def run_sweep(sweep: SweepConfig, runs_dir: Path = Path("runs"), *, executor: str = "auto",
              address: str | None = None, cpus_per_task: int = 1, where: Path | None = None, progress: bool = True,
              echo: Callable[[str], None] = print, max_runs: int = MAX_RUNS,
              connect_timeout_s: float = 30.0) -> dict[str, Any]:
    """Run (or resume) every run of ``sweep``; writes runs/sweeps/<name>-<hash>/sweep.json and returns it.

    ``executor``: ``local`` (one run after another here), ``ray`` (every stage a Ray task; ``address`` joins
    a running cluster, default: a local one), ``auto`` (Ray when installed). ``where``: the directory the
    sweep file is in (a relative ``base`` path is read from there)."""
    started = time.time()
    if cpus_per_task < 1:
        raise SublimError(f"--cpus-per-task {cpus_per_task}: give 1 or more CPUs per model stage")
    if not connect_timeout_s > 0:
        raise SublimError(f"--connect-timeout {connect_timeout_s:g}: give a positive number of seconds")
    sweep_dir(runs_dir, sweep)  # a name that would leave the runs directory fails before any run
    check_writable(Path(runs_dir), "the runs directory")
    runs = expand(sweep, where, max_runs)
    chosen = pick_executor(executor, echo)
    echo(f"sweep {sweep.name}: {len(runs)} runs, executor {chosen}")
    if chosen == "local":
        results = [run_or_error(r.config, partial(run_experiment, r.config, runs_dir, progress, echo), echo)
                   for r in runs]
    else:
        results = run_on_ray([r.config for r in runs], Path(runs_dir), address=address, cpus_per_task=cpus_per_task,
                             echo=echo, connect_timeout_s=connect_timeout_s)
    done = [(r, res) for r, res in zip(runs, results, strict=True) if "error" not in res]
    failed = [{"point": r.point, **res} for r, res in zip(runs, results, strict=True) if "error" in res]
    data = sweep_data([r for r, _ in done], [res for _, res in done])
    out = {"name": sweep.name, "sweep": sweep.model_dump(mode="json"), "executor": chosen,
           "runs": [_run_entry(r, res) for r, res in done], "failed_runs": failed, "data": data,
           "wall_time_s": round(time.time() - started, 1), "machine": machine_info()}
    dest = sweep_dir(runs_dir, sweep)
    dest.mkdir(parents=True, exist_ok=True)
    write_json(dest / "sweep.json", out)
    for name, pooled in data.get("pooled", {}).items():
        echo(f"pooled ({name}): {pooled['verdict']}")
    echo(f"sweep {sweep.name}: {len(done)} of {len(runs)} runs done{f', {len(failed)} failed' if failed else ''} → "
         f"{dest}")
    return out


def _run_entry(run: SweepRun, res: dict[str, Any]) -> dict[str, Any]:
    """A run's line in sweep.json: its verdict, and the teacher-level effect it rests on (where it has one)."""
    keep = ("replicated", "control_arm", "teacher_seeds", "replaced_teacher_seeds")
    return {"point": run.point, "run_id": res["run_id"], "verdict": res["verdict"],
            **{k: res[k] for k in keep if k in res},
            "n_train_examples": res["n_train_examples"], "wall_time_s": res["wall_time_s"]}
