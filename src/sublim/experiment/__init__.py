"""Experiments: one runner over an arm plan, one file per stage, trait kinds (preference, misalignment)."""

from sublim.experiment.runner import run_experiment, run_id

__all__ = ["run_experiment", "run_id"]
