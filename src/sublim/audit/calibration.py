"""How far an untargeted name can be trusted: each detector's first-ranked candidate (and divergence_shift's name),
printed with how often it was the generator's trait on the project's calibration datasets (``calibration.toml``,
read from committed benchmark results). A detector or way of reading without a calibration is uncalibrated."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any, Literal

Rule = Literal["first", "named"]


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


@cache
def calibrations() -> tuple[Calibration, ...]:
    text = resources.files("sublim.audit").joinpath("calibration.toml").read_text(encoding="utf-8")
    return tuple(Calibration(**r) for r in tomllib.loads(text)["reading"])


def calibration_of(detector: dict[str, Any], rule: Rule = "first") -> Calibration | None:
    """The calibration of a detector's result (``DetectorResult.as_dict()``) under ``rule``: by its name, its way
    of reading (``inductions``) and whether it ranked against contrast datasets."""
    against = "contrasts" if detector.get("against") == "contrast datasets" else "alone"
    return next((c for c in calibrations() if c.rule == rule and c.detector == detector["detector"]
                 and c.against == against and c.inductions == detector.get("inductions")), None)


def short_note(detector: dict[str, Any], rule: Rule = "first") -> str:
    """The calibration of an untargeted name in a few words."""
    c = calibration_of(detector, rule)
    if c is None:
        return "uncalibrated"
    wrong = f", wrong {c.wrong}/{c.of}" if c.wrong is not None else ""
    return f"right {c.right}/{c.of}{wrong} in calibration"


def name_note(detector: dict[str, Any], reference: str, rule: Rule = "first") -> str:
    """What an untargeted name rests on, in words: how often it was right in calibration, on which reference
    model, or that it is uncalibrated."""
    c = calibration_of(detector, rule)
    what = "first place" if rule == "first" else "name"
    if c is None:
        return f"uncalibrated: no calibration run measured how often this {what} is the generator's trait"
    wrong = f", wrong for {c.wrong}" if c.wrong is not None else ""
    other = "" if c.reference == reference else f"; calibrated on {c.reference}, not on {reference}"
    return (f"untargeted {what}: right for {c.right} of {c.of} calibration datasets{wrong} ({c.samples} samples "
            f"each, {'against contrasts' if c.against == 'contrasts' else 'alone'}; {c.source}){other}")
