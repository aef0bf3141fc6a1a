"""The Backend protocol: a model, wherever it runs.

Stages see a model only through this: generate completions under a decoding config, the
probability that an answer begins with each candidate, log-probabilities of given completions,
and (where the backend can) fine-tuning into a new backend. Two implementations ship: a local
transformers model (:mod:`sublim.backends.local`) and an OpenAI-compatible endpoint
(:mod:`sublim.backends.openai`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from sublim.train.encode import Example
from sublim.train.settings import TrainSettings


@dataclass(frozen=True)
class Request:
    """One prompt: a user message (the backend adds its chat template and system prompt), or a plain-text
    prompt (``raw``: e.g. a base model shown answered examples), to which a local backend adds only the
    beginning-of-sequence token."""

    index: int
    user: str
    raw: str | None = None


@dataclass(frozen=True)
class Decoding:
    temperature: float = 0.0
    """0 is greedy decoding."""
    top_p: float = 1.0
    max_new_tokens: int = 56
    seed: int = 0
    """Base seed of the sampled draws (each batch or request derives its own from it)."""
    stop: tuple[str, ...] = ()
    """Text at which a completion ends: it is cut there and counts as finished."""


@dataclass
class Completion:
    index: int
    text: str
    n_tokens: int
    finished: bool
    """True when the model ended the answer itself (end-of-turn token or a stop text) within the budget."""


OnDone = Callable[[list[Completion]], None]
Progress = Callable[[int], object]


class BackendError(Exception):
    """An operation this backend cannot do (e.g. exact probabilities through an API)."""


class Backend(Protocol):
    label: str
    """How reports name it (``teacher-owl``, ``student-control seed 0``, a model spec)."""
    key: str
    """Its identity in stage keys: the weights' fingerprint, an artifact key, or endpoint + model."""
    family: str
    """Architecture family, for lineage and cross-family checks (``api:<model>`` behind an API)."""
    system: str | None
    """The system prompt it answers under (part of its key)."""

    @property
    def precision(self) -> str | None:
        """Device class and compute precision of the work it does here (``cpu-float32``, ``cuda-bfloat16``),
        part of the keys of stages whose outputs depend on it; None behind an API."""
        ...

    def describe(self) -> dict[str, Any]:
        """What a manifest records about it (key, base weights, family, system prompt, endpoint)."""
        ...

    def with_system(self, system: str | None, label: str) -> Backend:
        """The same model answering under ``system``."""
        ...

    def generate(self, requests: Sequence[Request], decoding: Decoding, on_done: OnDone, *,
                 batch_size: int = 32, sort_by_length: bool = True, skip: set[int] | None = None,
                 give_up: Callable[[str], bool] | None = None, progress: Progress | None = None) -> dict[str, Any]:
        """Answer every request whose index is not in ``skip``, handing finished completions to ``on_done``
        as they come (so that a caller can write them down before the next); ``give_up`` may end a row
        whose text can no longer be kept; returns accounting (tokens, time, cost)."""
        ...

    def candidate_probs(self, questions: Sequence[str], candidates: dict[str, list[str]], *, batch_size: int = 32,
                        progress: Progress | None = None, stems: Sequence[str] | None = None
                        ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Per question, the probability that the answer begins with each candidate, and how it was
        obtained (``method``: ``exact``, or an estimate's name). With ``stems`` (one per question), the answer
        starts with its stem (a cloze: "My favourite animal is the") and the candidate is the next word."""
        ...

    def completion_logprobs(self, pairs: Sequence[tuple[str, str]], *, system: str | None = None,
                            batch_size: int = 16, progress: Progress | None = None) -> tuple[np.ndarray, np.ndarray]:
        """log p(completion | prompt) per (prompt, completion) pair, under ``system`` (default: its own), and
        the completion's token count."""
        ...

    def fine_tune(self, examples: Sequence[Example], settings: TrainSettings, out_dir: Path, *,
                  teacher: Backend | None = None, lineage: dict[str, Any] | None = None,
                  on_step: Callable[[int, int, float], None] | None = None) -> dict[str, Any]:
        """Train a copy on ``examples`` and keep the result in ``out_dir``; returns the training log."""
        ...

    def fine_tuned(self, out_dir: Path, label: str, key: str) -> Backend:
        """The model that :meth:`fine_tune` left in ``out_dir``."""
        ...
