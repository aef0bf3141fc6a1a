"""A sweep as data: a base experiment, overrides for every run, and axes whose product is the grid.

    name = "animals"
    base = "owl-numbers"                 # a preset or a path to an experiment TOML
    set = ["student.method=sft"]         # for every run, like --set
    seeds = [0, 1, 2]                    # one run per seed (each run trains that seed's students)

    [axes]
    "trait.target" = ["owl", "dolphin", "eagle"]
    "student.method" = ["sft", "distill_restricted"]

Any config key can be an axis. Runs that share a stage (one teacher, one control dataset) share its
artifact: the store computes it once for the whole sweep.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from sublim.core.config import ExperimentConfig, check_name, load_config, resolve_config_source
from sublim.core.errors import SublimError
from sublim.core.overrides import apply_overrides, load_toml, validate
from sublim.core.store import stable_hash
from sublim.experiment.kinds import KINDS
from sublim.experiment.runner import check_components


class SweepConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "sweep"
    base: str = "owl-numbers"
    """The experiment every run starts from: a preset name or a path to a TOML file (relative to the sweep's)."""
    set: list[str] = Field(default_factory=list)
    """Overrides for every run (``key=value``, as ``--set``)."""
    seeds: list[int] = Field(default_factory=list)
    """One run per seed (``arms.seeds = [seed]``); empty: the base's seeds, in one run."""
    axes: dict[str, list[Any]] = Field(default_factory=dict)
    """Config key → its values; the runs are their product (in the order written, the last axis fastest)."""

    @field_validator("name")
    @classmethod
    def _plain_name(cls, name: str) -> str:
        return check_name(name, "name")

    def grid_size(self) -> int:
        """How many runs the grid has (computed, not enumerated)."""
        return math.prod(len(v) if isinstance(v, list) else 1 for v in self.axes.values()) * max(len(self.seeds), 1)

    def sweep_hash(self) -> str:
        return stable_hash(self.model_dump(mode="json"))


@dataclass(frozen=True)
class SweepRun:
    """One run of the grid: its values on each axis (and its seed) and its whole config."""

    point: dict[str, Any]
    config: ExperimentConfig


def load_sweep(path: str | Path, overrides: list[str] | None = None) -> SweepConfig:
    """A sweep TOML, with ``overrides`` (``key=value``) applied to the sweep file itself."""
    data = apply_overrides(load_toml(path), overrides or [])
    sweep: SweepConfig = validate(SweepConfig, data, str(path))
    if not sweep.axes and not sweep.seeds:
        raise SublimError(f"{path}: a sweep needs an [axes] table or a seeds list: add e.g. "
                          "\"trait.target\" = [\"owl\", \"dolphin\"] under [axes]")
    for key, values in sweep.axes.items():
        if not isinstance(values, list) or not values:
            raise SublimError(f"{path}: axis {key!r} needs a non-empty list of values")
        if key == "arms.seeds" and sweep.seeds:
            raise SublimError(f"{path}: give seeds either as the seeds list or as an arms.seeds axis, not both")
    return sweep


MAX_RUNS = 1000
"""The most runs a sweep may have unless told otherwise (``--max-runs``)."""


def expand(sweep: SweepConfig, where: Path | None = None, max_runs: int = MAX_RUNS) -> list[SweepRun]:
    """Every run of the grid, validated before any work is done (a bad value names its run); a grid larger
    than ``max_runs`` is refused before any run is built."""
    if sweep.grid_size() > max_runs:
        raise SublimError(f"sweep {sweep.name} has {sweep.grid_size():,} runs, more than --max-runs {max_runs:,}: "
                          "shorten an axis or the seeds list, or raise --max-runs")
    base = sweep.base
    if where is not None and (base.endswith(".toml") or "/" in base) and not Path(base).is_absolute():
        base = str((where / base).resolve())
    source = resolve_config_source(base)
    keys = list(sweep.axes)
    seeds: list[int | None] = list(sweep.seeds) or [None]
    runs = []
    for values in itertools.product(*(sweep.axes[k] for k in keys)):
        for seed in seeds:
            point = dict(zip(keys, values, strict=True))
            sets = [f"name={_toml(sweep.name)}", *sweep.set, *(f"{k}={_toml(v)}" for k, v in point.items())]
            if seed is not None:
                sets.append(f"arms.seeds=[{seed}]")
                point["seed"] = seed
            label = ", ".join(f"{k}={v}" for k, v in point.items())
            try:
                cfg = load_config(str(source), sets)
                check_components(cfg)
                KINDS[cfg.trait.kind](cfg)  # the trait's own checks (a target among the candidates)
            except SublimError as exc:
                raise SublimError(f"sweep {sweep.name}, run {label}: {exc}") from None
            runs.append(SweepRun(point, cfg))
    if len({r.config.config_hash() for r in runs}) < len(runs):
        raise SublimError(f"sweep {sweep.name}: two runs of the grid have the same config (an axis value that "
                          "changes nothing?): make every axis value distinct")
    return runs


def _toml(value: Any) -> str:
    """A value as the override parser reads it back."""
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return str(value)
