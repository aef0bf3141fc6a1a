"""The Backend protocol: a model, wherever it runs.

Stages see a model only through this: generate completions under a decoding config, the
probability that an answer begins with each candidate, log-probabilities of given completions,
and (where the backend can) fine-tuning into a new backend and token reads (:class:`TokenReader`: what
the audit asks of a model's tokens). Two implementations ship: a local transformers model
(:mod:`sublim.backends.local`) and an OpenAI-compatible endpoint (:mod:`sublim.backends.openai`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from sublim.backends.reads import DivergenceMap, FlaggedLogprobs, Text
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
    prefill: str = ""
    """The start of the answer, which the model continues (a cloze stem: "My favourite animal is the"); the
    completion is what follows it. A local model only: a chat endpoint cannot be given one."""


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


class Vocabulary(Protocol):
    """What the audit needs of a reader's tokenizer (the token ids of its maps are these)."""

    def decode(self, ids: Sequence[int]) -> str:
        """The text of ``ids``."""
        ...

    def count(self, text: str) -> int:
        """How many tokens ``text`` encodes to (no special tokens added)."""
        ...

    def digits(self) -> np.ndarray:
        """The ids of tokens that decode to digits only."""
        ...

    def stops(self) -> list[int]:
        """The tokens that end an answer (end of sequence, end of turn)."""
        ...


class TraitGradientReads(Protocol):
    """The candidates' gradients taken once; each chunk's dot products with them on request."""

    names: list[str]

    def chunk_scores(self, pairs: Sequence[tuple[str, str]], chunk: int = 8,
                     progress: Progress | None = None) -> np.ndarray:
        """[n_chunks, n_candidates]: ∇L_chunk · ∇L_c for consecutive chunks of ``chunk`` (prompt, completion)
        pairs: each chunk's first-order change of log p_c per unit learning rate."""
        ...


@runtime_checkable
class TokenReader(Protocol):
    """A model whose tokens can be read (a local model: its weights are here)."""

    key: str
    """The model's identity (its backend's key): what a cached read is keyed by."""

    def fast_bf16(self) -> bool:
        """Whether reads run their body in bf16 by default here (where bf16 is fast; the head stays float32)."""
        ...

    def vocabulary(self) -> Vocabulary:
        ...

    def divergence_map(self, samples: Sequence[Text], *, bf16: bool | None = None, batch_size: int = 16,
                       progress: Progress | None = None) -> DivergenceMap:
        """Teacher-force every sample: per completion token, the data's token, this model's argmax and both
        log-probabilities (the output head only at completion positions)."""
        ...

    def flagged_logprobs(self, datasets: Sequence[tuple[Sequence[Text], DivergenceMap]], *,
                         inductions: Sequence[str] = (), placement: str = "prompt",
                         models: Sequence[TokenReader] = (), bf16: bool | None = None, n_alternatives: int = 8,
                         samples_per_pass: int | None = None,
                         progress: Progress | None = None) -> list[FlaggedLogprobs]:
        """Each dataset's flagged tokens (its map's, built by this reader) read under every column: each of
        ``models`` (default: this one; loaded one at a time, encoded with this reader's tokenizer) under each of
        ``inductions`` (a sentence told to the model at ``placement``; default: none), model by model. The first
        column is the neutral one: its ranking at each position picks the alternatives every column is read at.
        ``progress`` counts samples read, once per model."""
        ...

    def continuations(self, samples: Sequence[Text], *, max_new_tokens: int, batch_size: int = 16,
                      progress: Progress | None = None) -> list[Completion]:
        """The greedy continuation of each sample's completion, as if its end of turn had not come: the text the
        model would write next, up to its own end of turn (``finished``) or ``max_new_tokens``; empty where it,
        too, would have ended there."""
        ...

    def trait_gradients(self, candidates: dict[str, list[str]], questions: Sequence[str],
                        progress: Progress | None = None) -> TraitGradientReads:
        """∇L_c for each candidate: the loss of answering ``questions`` with its first spelling, capitalized."""
        ...


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
                  on_step: Callable[[int, int, float], None] | None = None, save_every_s: float = 0.0
                  ) -> dict[str, Any]:
        """Train a copy on ``examples`` and keep the result in ``out_dir``; returns the training log. Where the
        training runs here, it saves its state in ``out_dir`` every ``save_every_s`` seconds (0: never) and an
        interrupted training goes on from it; a fine-tuning API keeps its own job."""
        ...

    def fine_tuned(self, out_dir: Path, label: str, key: str) -> Backend:
        """The model that :meth:`fine_tune` left in ``out_dir``."""
        ...

    def reader(self) -> TokenReader:
        """Its token reads; :class:`BackendError` where it has none (a model behind an API gives no
        teacher-forced log-probabilities of every token, nor gradients)."""
        ...
