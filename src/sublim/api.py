"""The public API: run an experiment, an audit or the toy experiment, and render its report.

These are the library's entry points (re-exported from ``sublim``); the CLI calls them too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sublim.audit.config import AuditConfig
from sublim.audit.run import run_audit as _run_audit
from sublim.core.config import ExperimentConfig
from sublim.core.tracking import flat, open_tracking
from sublim.experiment.runner import run_experiment as _run_experiment
from sublim.experiment.runner import run_id
from sublim.report import render_audit_report, render_report, render_sweep_report, render_toy_report
from sublim.sweep import SweepConfig, sweep_dir
from sublim.sweep import run_sweep as _run_sweep
from sublim.toy import ToyConfig
from sublim.toy import run_toy as _run_toy


def run_experiment(cfg: ExperimentConfig, runs_dir: Path = Path("runs"), progress: bool = True,
                   echo: Callable[[str], None] = print, track: Sequence[str] = (),
                   track_dir: Path | None = None) -> dict[str, Any]:
    """Run (or resume) an experiment; writes runs/<run-id>/results.json, chart.png and report.md. ``track``:
    trackers (tensorboard, mlflow, wandb) also sent the training curves and the results, under ``track_dir``
    (default runs/tracking), keyed by the run id."""
    tracking = open_tracking(track, Path(track_dir or Path(runs_dir) / "tracking"), run_id(cfg),
                             flat(cfg.model_dump(mode="json"))) if track else None
    try:
        res = _run_experiment(cfg, runs_dir, progress, echo, tracking=tracking)
    finally:
        if tracking is not None:
            tracking.close()
    render_report(Path(runs_dir) / run_id(cfg))
    return res


def run_sweep(sweep: SweepConfig, runs_dir: Path = Path("runs"), **options: Any) -> dict[str, Any]:
    """Run (or resume) every run of a sweep (options as :func:`sublim.sweep.run_sweep`: executor, address,
    cpus_per_task, where, progress, echo); writes runs/sweeps/<name>-<hash>/sweep.json, chart.png, matrix.png
    and report.md, and each run's own report."""
    out = _run_sweep(sweep, runs_dir, **options)
    for run in out["runs"]:
        render_report(Path(runs_dir) / run["run_id"])
    render_sweep_report(sweep_dir(runs_dir, sweep))
    return out


def run_audit(config: AuditConfig, out_dir: Path, **options: Any) -> dict[str, Any]:
    """Audit a dataset against a reference model, as ``config`` says (:func:`sublim.audit.config.load_audit_config`
    reads one from TOML; options as :func:`sublim.audit.run.run_audit`: store, progress, echo); writes audit.json
    (the config whole, with its hash), scores.jsonl and report.md into ``out_dir``."""
    out = _run_audit(config, out_dir, **options)
    render_audit_report(out_dir)
    return out


def run_toy(cfg: ToyConfig, out: Path, progress: bool = True) -> dict[str, Any]:
    """The auxiliary-logit MLP experiment; writes results.json and its charts and report into ``out``."""
    res = _run_toy(cfg, out, progress)
    render_toy_report(Path(out))
    return res
