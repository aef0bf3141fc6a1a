"""The typed shape of ``results.json``: one model per trait kind, told apart by ``kind``, and the JSON Schema
shipped with the package (``sublim/schemas/results.schema.json``) that any reader, in any language, can
validate a run's results against.

The runner validates what it writes, so a field added to results without its place here fails the run's
tests, not a reader's script months later. The verdict, the teacher-level effect it rests on, the seeds, the
filter and the stage table are typed field by field; the descriptive tables beside them (question-level
effects, per-arm tables, the cloze's arms) are typed as mappings of their documented rows.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

SCHEMA_VERSION = 1
"""Bumped when a field of ``results.json`` changes meaning or goes away (adding one does not bump it)."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Interval(Strict):
    value: float
    low: float
    high: float


class Gain(Strict):
    """A log gain of the trait arm over its control, the teacher seed as the unit."""

    per_teacher: list[float]
    mean: float
    low: float | None = Field(description="95% Student-t interval (None with one teacher)")
    high: float | None
    p_sign_flip: float | None = Field(description="exact two-sided sign-flip p (None with one teacher)")
    ratio: float = Field(description="exp(mean)")


class Named(Strict):
    named: int
    answers: int
    rate: Interval | None = Field(description="Wilson interval; None without sampled answers")


class Sampled(Strict):
    treated: Named
    control: Named


class PreferenceEffect(Strict):
    """The verdict of a preference experiment and the figures printed beside it (README: the verdict rule)."""

    unit: str
    n_teachers: int
    control: str
    min_effect: float
    log_share_gain: Gain
    log_prob_gain: Gain
    log_candidate_total_gain: Gain
    sampled: Sampled
    word: Literal["TRANSFER", "GENERIC SHIFT", "NO TRANSFER", "UNREPLICATED"]
    verdict: str


class RateEffect(Strict):
    """Misalignment: the trait students' misaligned rate minus their control's, per teacher seed."""

    unit: str
    n_teachers: int
    per_teacher: list[float]
    mean: float
    low: float | None
    high: float | None
    p_sign_flip: float | None


class FilterStats(Strict):
    total: int
    kept: int
    pass_rate: float
    reject_reasons: dict[str, int]


class StageRow(Strict):
    key: str
    path: str
    wall_time_s: float | None
    tokens_per_s: float | None = None
    peak_rss_mb: float | None = None


class Cloze(Strict):
    stems: list[str]
    arms: dict[str, dict[str, float]]
    replicated: PreferenceEffect


class Common(Strict):
    schema_version: int = SCHEMA_VERSION
    run_id: str
    config_hash: str
    config: dict[str, Any] = Field(description="the run's whole configuration (sublim.core.config)")
    n_train_examples: int
    teacher_seeds: list[int] = Field(description="the teacher seeds used, after any spare replaced one")
    replaced_teacher_seeds: dict[str, str] = Field(default_factory=dict,
                                                   description="teacher seed -> why a spare replaced its pair")
    student_seeds: list[int]
    filter: dict[str, FilterStats] = Field(description="per dataset (source and teacher tag)")
    trait: str
    control_arm: str
    verdict: str
    stages: dict[str, StageRow]
    wall_time_s: float
    machine: dict[str, Any]


class PreferenceResults(Common):
    kind: Literal["preference"]
    traits: list[str]
    arms: dict[str, dict[str, Any]] = Field(description="per arm: n_runs and prob_/share_<trait> intervals")
    candidates: dict[str, list[dict[str, dict[str, float]]]] = Field(
        description="per arm, per run: every candidate's mean probability and share")
    replicated: PreferenceEffect
    effect: dict[str, Any] = Field(description="question-level statistics: a description of the trained models")
    question_level: str
    cloze: Cloze | None = None
    matrix: dict[str, Any] | None = None
    cross_model: dict[str, Any] | None = None
    defence: dict[str, Any] | None = None


class MisalignmentResults(Common):
    kind: Literal["misalignment"]
    arms_misalignment: dict[str, dict[str, Any]] = Field(description="per arm: misaligned rate and judge figures")
    replicated: RateEffect
    effect_misalignment: dict[str, Any]


RunResults = Annotated[PreferenceResults | MisalignmentResults, Field(discriminator="kind")]
ADAPTER: TypeAdapter[PreferenceResults | MisalignmentResults] = TypeAdapter(RunResults)


def checked(results: dict[str, Any]) -> dict[str, Any]:
    """``results`` with its schema version, after checking it has the typed shape (a ValidationError if not)."""
    out = {"schema_version": SCHEMA_VERSION, **results}
    ADAPTER.validate_python(out)
    return out


def load_results(path: Path) -> PreferenceResults | MisalignmentResults:
    """A run's ``results.json``, typed."""
    return ADAPTER.validate_json(Path(path).read_bytes())


def results_schema() -> dict[str, Any]:
    """The JSON Schema of ``results.json``, as the models above give it."""
    schema: dict[str, Any] = ADAPTER.json_schema()
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": "sublim results.json",
            "x-schema-version": SCHEMA_VERSION, **schema}


def shipped_schema() -> dict[str, Any]:
    """The schema file shipped with the package, kept equal to :func:`results_schema` by a test (write it again
    with ``python -c "import json; from sublim.experiment.results import results_schema as s;
    print(json.dumps(s(), indent=1))" > src/sublim/schemas/results.schema.json``)."""
    text = resources.files("sublim").joinpath("schemas/results.schema.json").read_text()
    out: dict[str, Any] = json.loads(text)
    return out
