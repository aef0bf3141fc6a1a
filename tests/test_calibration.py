"""The calibration an audit prints beside an untargeted name: every figure is the committed benchmark's, and the
verdict and report carry it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sublim.audit.calibration import calibration_of, calibrations, name_note, short_note
from sublim.audit.detectors.base import DetectorResult
from sublim.audit.run import verdict

ROOT = Path(__file__).resolve().parents[1]


def _at(doc: dict[str, Any], key: str) -> Any:
    for part in key.split("."):
        doc = doc[part]
    return doc


@pytest.mark.parametrize("c", calibrations(), ids=lambda c: f"{c.detector}-{c.inductions}-{c.rule}-{c.against}")
def test_each_calibration_figure_is_the_committed_benchmarks(c) -> None:
    doc = json.loads((ROOT / c.source).read_text())
    assert _at(doc, c.key) == c.right
    if c.wrong_key is not None:
        assert _at(doc, c.wrong_key) == c.wrong
    if c.of_wrong_key is not None:
        assert _at(doc, c.of_wrong_key) == c.of_wrong and 0 <= c.wrong <= c.of_wrong
    else:
        assert 0 <= c.right + (c.wrong or 0) <= c.of
    datasets = _at(doc, "results.datasets")
    assert len([d for d in datasets if not d.startswith(("neutral", "control"))]) == c.of
    rows = {v["rows"] for v in datasets.values() if isinstance(v, dict) and "rows" in v} if isinstance(
        datasets, dict) else set()
    assert str(c.samples) in c.key or doc["results"].get("examples") == c.samples or rows == {c.samples}


def test_each_way_of_reading_has_one_calibration_per_rule() -> None:
    seen = [(c.rule, c.detector, c.inductions, c.against) for c in calibrations()]
    assert len(seen) == len(set(seen))


def _result(name: str, top: str, **details: Any) -> DetectorResult:
    return DetectorResult(name, np.zeros(3), 0.1, 1e-6, {"top_trait": top, **details})


def test_a_name_says_what_it_rests_on() -> None:
    proxy = _result("divergence_shift", "owl", inductions="proxy", against="contrast datasets",
                    baseline="agreement").as_dict()
    assert calibration_of(proxy) is not None and short_note(proxy) == "right 2/5 in calibration"
    assert name_note(proxy, "smollm2-135m").startswith("untargeted first place: right for 2 of 5 calibration")
    assert "not on" not in name_note(proxy, "smollm2-135m")
    assert "calibrated on smollm2-135m, not on my-7b" in name_note(proxy, "my-7b")
    alone = _result("divergence_shift", "owl", inductions="proxy", against="zero", baseline="agreement").as_dict()
    assert short_note(alone) == "right 0/5 in calibration"  # no contrasts: another calibration
    other_statistic = {**proxy, "baseline": "alternatives"}
    assert short_note(other_statistic) == "uncalibrated"  # read otherwise than calibrated: no figure applies
    assert short_note(proxy, "named") == "right 0/5, wrong 0/5 in calibration"
    other = _result("likelihood_shift", "owl", against="reference sample").as_dict()
    assert short_note(other) == "uncalibrated" and name_note(other, "x").startswith("uncalibrated")


def test_the_verdict_prints_a_lean_with_its_calibration() -> None:
    flagged = [_result("student_probe", "eagle", against="contrast datasets", examples=1000)]
    text = verdict(flagged, "10 samples")
    assert "leans toward eagle (untargeted first place, right 0/5 in calibration)" in text
    unflagged = [DetectorResult("student_probe", np.zeros(3), 0.0, 0.5, {"top_trait": "eagle"})]
    assert "leans toward" not in verdict(unflagged, "10 samples")


def test_a_targeted_reading_says_what_its_replication_found() -> None:
    prompted = _result("divergence_shift", "owl", inductions="prompted", against="contrast datasets",
                       placement="prompt", baseline="alternatives").as_dict()
    assert short_note(prompted, "targeted") == "in its replication: own trait 1/5, false alarms 15/155"
    assert name_note(prompted, "smollm2-135m", "targeted").startswith(
        "targeted reading: in its pre-registered replication the own trait stood out for 1 of 5 trait datasets, "
        "and 15 of 155 other (dataset, candidate) pairs stood out too")
    assert short_note({**prompted, "placement": "system"}, "targeted") == "uncalibrated"
