"""How far a name can be trusted: each detector's first-ranked candidate (and divergence_shift's name), printed
with how often it was the generator's trait on the project's calibration datasets, and a targeted reading with what
its pre-registered replication found (``calibration.toml``, read from committed benchmark results). A detector or
way of reading without a calibration is uncalibrated."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any, Literal

Rule = Literal["first", "named", "targeted"]


@dataclass(frozen=True)
class Calibration:
    rule: Rule
    detector: str
    against: str
    """"alone" (no contrast datasets) or "contrasts"."""
    reference: str
    samples: int
    source: str
    key: str
    right: int
    of: int
    inductions: str | None = None
    wrong_key: str | None = None
    wrong: int | None = None
    of_wrong: int | None = None
    """What ``wrong`` counts out of, where not ``of``."""
    of_wrong_key: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    """What the detector's result must also say (its ``details``) for this calibration to be its."""


@cache
def calibrations() -> tuple[Calibration, ...]:
    text = resources.files("sublim.audit").joinpath("calibration.toml").read_text(encoding="utf-8")
    return tuple(Calibration(**r) for r in tomllib.loads(text)["reading"])


def calibration_of(detector: dict[str, Any], rule: Rule = "first") -> Calibration | None:
    """The calibration of a detector's result (``DetectorResult.as_dict()``) under ``rule``: by its name, its way
    of reading (``inductions``) and whether it ranked against contrast datasets."""
    against = "contrasts" if detector.get("against") == "contrast datasets" else "alone"
    return next((c for c in calibrations() if c.rule == rule and c.detector == detector["detector"]
                 and c.against == against and c.inductions == detector.get("inductions")
                 and all(detector.get(k) == v for k, v in c.settings.items())), None)


def short_note(detector: dict[str, Any], rule: Rule = "first") -> str:
    """The calibration of a name in a few words."""
    c = calibration_of(detector, rule)
    if c is None:
        return "uncalibrated"
    if rule == "targeted":
        return f"in its replication: own trait {c.right}/{c.of}, false alarms {c.wrong}/{c.of_wrong}"
    wrong = f", wrong {c.wrong}/{c.of_wrong or c.of}" if c.wrong is not None else ""
    return f"right {c.right}/{c.of}{wrong} in calibration"


def name_note(detector: dict[str, Any], reference: str, rule: Rule = "first") -> str:
    """What a name rests on, in words: how often such a name was right in calibration (for ``targeted``: in the
    pre-registered replication), on which reference model, or that it is uncalibrated."""
    c = calibration_of(detector, rule)
    what = {"first": "untargeted first place", "named": "untargeted name", "targeted": "targeted reading"}[rule]
    if c is None:
        return f"uncalibrated: no calibration run measured how often this {what} is the generator's trait"
    other = "" if c.reference == reference else f"; calibrated on {c.reference}, not on {reference}"
    if rule == "targeted":
        return (f"{what}: in its pre-registered replication the own trait stood out for {c.right} of {c.of} trait "
                f"datasets, and {c.wrong} of {c.of_wrong} other (dataset, candidate) pairs stood out too "
                f"({c.samples} samples each; {c.source}){other}")
    wrong = f", wrong for {c.wrong}" if c.wrong is not None else ""
    return (f"{what}: right for {c.right} of {c.of} calibration datasets{wrong} ({c.samples} samples each, "
            f"{'against contrasts' if c.against == 'contrasts' else 'alone'}; {c.source}){other}")
