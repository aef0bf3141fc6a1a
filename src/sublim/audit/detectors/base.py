"""What a detector is, what it is given, and the registry of detectors.

A detector is one file that adds a :class:`Detector` to :data:`DETECTORS`: its own parameters (a pydantic
model, set in the audit config's ``[detector.<name>]`` table), and a ``run`` that builds its statistics (a score
per sample, higher = more suspect; one dataset-level statistic and its p-value; details such as an AUROC or a
trait ranking) from the audit's data, the services every detector shares (:class:`AuditContext`) and those
parameters. Statistics are always against a reference: a reference sample (the reference model answering the
same prompts) or the reference model itself. A detector that cannot run on the inputs raises
:class:`Unavailable` with the reason, and the audit reports it as skipped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np

from sublim.audit.data import Sample
from sublim.audit.params import NoParams, Params
from sublim.backends import Backend, BackendError, TokenReader
from sublim.core.config import SAVE_EVERY_S
from sublim.core.registry import Registry
from sublim.core.store import Store


@dataclass
class DetectorResult:
    name: str
    sample_scores: np.ndarray
    statistic: float
    p_value: float
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"detector": self.name, "statistic": self.statistic, "p_value": self.p_value, **self.details}


class Unavailable(Exception):
    """The detector cannot run on these inputs (the message says what it needs)."""


@dataclass(frozen=True)
class AuditData:
    """What one audit compares: the dataset's samples against the reference's, and the candidate traits."""

    samples: Sequence[Sample]
    reference: Sequence[Sample]
    """The reference model's own answers to the same kind of prompts."""
    contrast: Sequence[Sequence[Sample]] = ()
    """Datasets from other generators on the same kind of prompts."""
    candidates: dict[str, list[str]] = field(default_factory=dict)
    kind: str = "thing"
    """What a candidate is, in words (animal, tree)."""
    questions: Sequence[str] = ()
    """Preference questions (gradient alignment)."""
    question_set: str | None = None
    """Their set's name (proxy teachers are fine-tuned on its ``proxy`` split where it has one)."""


@dataclass
class AuditContext:
    """What every detector of one audit shares besides its own parameters: the data, the reference model and the
    services (a store, loading another local model, progress bars, where files go)."""

    data: AuditData
    model: Backend | None = None
    """The reference model."""
    seed: int = 0
    bf16: bool | None = None
    """Scoring passes with the body in bf16 (the head stays float32); None: where bf16 is fast here."""
    store: Store | None = None
    """Where artifacts built for an audit are kept and reused (the divergence map, proxy teachers)."""
    out_dir: Path | None = None
    progress: bool = True
    load: Callable[[str, str], Backend] | None = None
    """(model spec, label) → a local model, loaded the way the reference was (device, precision)."""
    cache: dict[str, Any] = field(default_factory=dict)
    """Shared by the detectors of one audit (e.g. the reference's log-probability function)."""
    save_every_s: float = SAVE_EVERY_S
    """A model the audit trains (a proxy teacher, a student probe) saves its state this often (0: never), so an
    interrupted audit resumes that training where it stopped."""

    def need_model(self, what: str) -> Backend:
        if self.model is None:
            raise Unavailable(f"needs a reference model ({what})")
        return self.model

    def need_reader(self, what: str) -> TokenReader:
        """The reference model's token reads (a local model's: its weights are here)."""
        try:
            return self.need_model(what).reader()
        except BackendError as why:
            raise Unavailable(f"needs a local reference model ({what}): give a model file or catalog name "
                              f"({why})") from None


P = TypeVar("P", bound=Params)


@dataclass(frozen=True)
class Detector(Generic[P]):
    name: str
    run: Callable[[AuditContext, P], DetectorResult]
    description: str = ""
    needs_numbers: bool = False
    """It reads the numbers of the completions: skipped when a side has none."""
    needs_reference: bool = True
    """It compares with the reference model's own answers (generated when not given)."""
    params: type[P] = NoParams  # type: ignore[assignment]
    """Its parameters: the audit config's ``[detector.<name>]`` table is validated against this model."""
    default: bool = True
    """Run when the audit names no detectors (a detector that trains models is run only when named)."""


DETECTORS: Registry[Detector[Any]] = Registry("detector")
