"""What a defence is, what it is given, and the registry of defences.

A defence is a transform of a dataset that may strip a hidden trait, with its recorded cost. It is
one file that adds a :class:`Defence` to :data:`DEFENCES`; ``sublim defend`` and the experiment's
defend stage both apply it through the registry.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sublim.audit.data import Sample
from sublim.backends import Backend, Completion, DivergenceMap, TokenReader, Vocabulary
from sublim.core.config import FilterConfig
from sublim.core.files import ResumableJsonl
from sublim.core.registry import Registry


def defence_cost(n_in: int, n_out: int, n_changed: int) -> dict[str, Any]:
    """What a defence cost: samples in and out, the fraction kept, the fraction of those it changed."""
    return {"n_in": n_in, "n_out": n_out, "kept_fraction": n_out / max(n_in, 1),
            "changed_fraction": n_changed / max(n_out, 1)}


@dataclass
class DefenceInputs:
    """What a defence may use besides the samples; each defence says which it needs."""

    seed: int = 0
    fraction: float = 0.1
    scores: np.ndarray | None = None
    """drop_top: one detector score per sample."""
    model: Backend | None = None
    """regenerate: the model that rewrites the completions."""
    pool: Sequence[Sample] = ()
    """regenerate: answered examples to show a base model."""
    shots: int = 0
    carrier: str = "numbers"
    filter: FilterConfig = field(default_factory=FilterConfig)
    banned_words: Sequence[str] = ()
    meta: dict[int, dict[str, Any]] = field(default_factory=dict)
    """The prompt meta of each sample's line (a carrier's check may need it)."""
    max_new_tokens: int = 64
    temperature: float = 0.0
    batch_size: int = 16
    log: ResumableJsonl | None = None
    """regenerate: where rewritten samples are written as they come, so a killed run resumes."""
    progress: Callable[[int], object] | None = None
    divergence: DivergenceMap | None = None
    """replace_*: the data's divergence map under the reference model."""
    vocabulary: Vocabulary | None = None
    """replace_*, reference_ends: the reference model's vocabulary (the map's token ids are its)."""
    remap: Callable[[Sequence[Sample]], DivergenceMap] | None = None
    """replace_divergent_rounds: the divergence map of (changed) samples under the same reference model."""
    extend: Callable[[Sequence[Sample]], list[Completion]] | None = None
    """reference_ends: the reference model's greedy continuation of each sample's completion (max_new_tokens)."""


def read_under(reader: TokenReader, inputs: DefenceInputs, samples: Sequence[Sample], bf16: bool | None,
               progress: Callable[[int], object] | None = None) -> DivergenceMap:
    """Give ``inputs`` what the divergence defences read under the reference model ``reader``: the map of
    ``samples`` (``progress`` counts them; returned too), its vocabulary, re-reads of changed samples and greedy
    continuations (``inputs.max_new_tokens``, in batches of ``inputs.batch_size``)."""
    inputs.divergence = reader.divergence_map(samples, bf16=bf16, progress=progress)
    inputs.vocabulary = reader.vocabulary()
    inputs.remap = lambda ss: reader.divergence_map(ss, bf16=bf16)
    inputs.extend = lambda ss: reader.continuations(ss, max_new_tokens=inputs.max_new_tokens,
                                                    batch_size=inputs.batch_size)
    return inputs.divergence


@dataclass(frozen=True)
class Defence:
    name: str
    apply: Callable[[Sequence[Sample], DefenceInputs], tuple[list[Sample], dict[str, Any]]]
    """(samples, inputs) → (defended samples, cost: n_in, n_out, kept and changed fractions, and more)."""
    needs: frozenset[str] = frozenset()
    """Which of scores, model, reference, divergence, continuation it needs."""
    reads: frozenset[str] = frozenset()
    """The [defence] config fields it reads besides method and seed (they key the defend stage)."""
    description: str = ""


DEFENCES: Registry[Defence] = Registry("defence")
