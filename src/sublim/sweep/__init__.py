"""Sweeps: a grid of experiments over one store, run in this process or on a Ray cluster."""

from sublim.sweep.config import SweepConfig, SweepRun, expand, load_sweep
from sublim.sweep.run import run_sweep, sweep_dir

__all__ = ["SweepConfig", "SweepRun", "expand", "load_sweep", "run_sweep", "sweep_dir"]
