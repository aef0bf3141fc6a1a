"""What a detector is, what it is given, and the registry of detectors.

A detector is one file that adds a :class:`Detector` to :data:`DETECTORS`: its statistics (a
score per sample, higher = more suspect; one dataset-level statistic and its p-value; details
such as an AUROC or a trait ranking) and a ``run`` that builds them from :class:`AuditInputs`.
Statistics are always against a reference: a reference sample (the reference model answering the
same prompts) or the reference model itself. A detector that cannot run on the inputs raises
:class:`Unavailable` with the reason, and the audit reports it as skipped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sublim.audit.data import Sample
from sublim.backends import Backend, BackendError, TokenReader
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


@dataclass
class AuditInputs:
    """Everything a detector may use. Only ``samples`` and ``reference`` are always there."""

    samples: Sequence[Sample]
    reference: Sequence[Sample]
    """The reference model's own answers to the same kind of prompts."""
    model: Backend | None = None
    """The reference model."""
    candidates: dict[str, list[str]] = field(default_factory=dict)
    kind: str = "thing"
    """What a candidate is, in words (animal, tree)."""
    contrast: Sequence[Sequence[Sample]] = ()
    """Datasets from other generators on the same kind of prompts."""
    teacher: Backend | None = None
    judge: Backend | None = None
    questions: Sequence[str] = ()
    """Preference questions (gradient alignment)."""
    out_dir: Path | None = None
    seed: int = 0
    progress: bool = True
    cache: dict[str, Any] = field(default_factory=dict)
    """Shared by the detectors of one audit (e.g. the reference's log-probability function)."""
    store: Store | None = None
    """Where artifacts built for an audit are kept and reused (the divergence map)."""
    placement: str = "prompt"
    """Where divergence_shift puts its inductions: after the prompt, or as the system prompt."""
    inductions: str = "prompted"
    """How divergence_shift induces each candidate: a sentence told to the reference (``prompted``) or a proxy
    teacher fine-tuned from it (``proxy``, built once per candidate in the store)."""
    question_set: str | None = None
    """The question set proxy teachers are fine-tuned on (its ``proxy`` split where it has one)."""
    proxy_seeds: int = 1
    """Proxy teachers per candidate, each of its own seed; the reads are averaged over them."""
    bf16: bool | None = None
    """Scoring passes with the body in bf16 (the head stays float32); None: where bf16 is fast here."""

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


@dataclass(frozen=True)
class Detector:
    name: str
    run: Callable[[AuditInputs], DetectorResult]
    description: str = ""
    needs_numbers: bool = False
    """It reads the numbers of the completions: skipped when a side has none."""
    needs_reference: bool = True
    """It compares with the reference model's own answers (generated when not given)."""


DETECTORS: Registry[Detector] = Registry("detector")
