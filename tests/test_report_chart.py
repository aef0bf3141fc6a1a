"""The run chart reads at a glance: bars far apart in size (a base model of another family at the floor beside
instruct students) get a log axis, so none of them vanishes."""

from __future__ import annotations

import json
from pathlib import Path

from sublim.report.experiment import _student_arms, render_chart, wide_range

ROOT = Path(__file__).resolve().parents[1]


def test_wide_ranges_get_a_log_axis_and_close_ones_do_not() -> None:
    assert wide_range([0.02, 0.03, 3e-5]) and not wide_range([0.02, 0.03, 0.001])
    assert not wide_range([0.02, 0.0]) and not wide_range([0.5])


def test_the_cross_model_chart_uses_the_log_axis(tmp_path: Path) -> None:
    """The committed cross-model run's arms (probabilities of owl: Gemma's base model at ~1e-8, SmolLM2's ~1e-4)."""
    arms = json.loads((ROOT / "benchmarks/results/owl-cross-model-cpu.json").read_text())["results"]["arms"]
    res = {"traits": ["owl"], "trait": "owl", "arms": arms, "run_id": "owl-cross-model", "n_train_examples": 150}
    probs = [arms[a]["prob_owl"]["value"] for a in _student_arms(res)]
    assert wide_range(probs), probs  # on a linear axis the Gemma bars would be invisible
    render_chart(res, tmp_path / "chart.png")
    assert (tmp_path / "chart.png").stat().st_size > 10_000
