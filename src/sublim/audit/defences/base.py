"""What a defence is, what it is given, and the registry of defences.

A defence is a transform of a dataset that may strip a hidden trait, with its recorded cost. It is one file that
adds a :class:`Defence` to :data:`DEFENCES`: its own parameters (a pydantic model: the ``[defence]`` config's or
``sublim defend``'s values of its fields; they key the defend stage), what it needs besides the samples (a
detector's scores, a model to rewrite with, the reference's reads), and ``apply``. ``sublim defend`` and the
experiment's defend stage both build what it is given with :func:`defence_context`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Generic, TypeVar

import numpy as np

from sublim.audit.data import Sample
from sublim.audit.params import NoParams, Params, build_params
from sublim.backends import Backend, Completion, DivergenceMap, TokenReader, Vocabulary
from sublim.carriers import check_completion
from sublim.core.config import FilterConfig
from sublim.core.errors import SublimError
from sublim.core.files import ResumableJsonl
from sublim.core.registry import Registry


def defence_cost(n_in: int, n_out: int, n_changed: int) -> dict[str, Any]:
    """What a defence cost: samples in and out, the fraction kept, the fraction of those it changed."""
    return {"n_in": n_in, "n_out": n_out, "kept_fraction": n_out / max(n_in, 1),
            "changed_fraction": n_changed / max(n_out, 1)}


@dataclass(frozen=True)
class CarrierCheck:
    """The filter a changed or rewritten completion must still pass: the carrier's own check, the filter config,
    the banned words, and the prompt meta of each sample's line (a carrier's check may need it)."""

    carrier: str = "numbers"
    filter: FilterConfig = field(default_factory=FilterConfig)
    banned_words: Sequence[str] = ()
    meta: dict[int, dict[str, Any]] = field(default_factory=dict)

    def reason(self, text: str, line: int, finished: bool = True) -> str:
        """'' if ``text`` (the completion of the sample on ``line``) passes, else why not."""
        return check_completion(self.carrier, text, self.meta.get(line, {}), self.filter, self.banned_words, finished)


@dataclass(frozen=True)
class ReferenceReads:
    """What the divergence defences read under the reference model (the students' starting model)."""

    divergence: DivergenceMap
    """The data's divergence map."""
    vocabulary: Vocabulary
    """The reference's vocabulary (the map's token ids are its)."""
    remap: Callable[[Sequence[Sample]], DivergenceMap]
    """The divergence map of (changed) samples under the same reference."""
    extend: Callable[[Sequence[Sample]], list[Completion]]
    """The reference's greedy continuation of each sample's completion."""


@dataclass
class DefenceContext:
    """What a defence is given besides the samples and its own parameters; each defence says which it needs."""

    seed: int = 0
    check: CarrierCheck = field(default_factory=CarrierCheck)
    max_new_tokens: int = 64
    """The most tokens a model writes per completion (regenerate, the reference's continuations)."""
    temperature: float = 0.0
    batch_size: int = 16
    scores: np.ndarray | None = None
    """One detector score per sample (drop_top)."""
    model: Backend | None = None
    """The model that rewrites the completions (regenerate)."""
    pool: Sequence[Sample] = ()
    """Answered examples to show a base model (regenerate)."""
    reads: ReferenceReads | None = None
    """The data read under the reference model (replace_*, reference_ends)."""
    log: ResumableJsonl | None = None
    """Where rewritten samples are written as they come, so a killed run resumes (regenerate)."""
    progress: Callable[[int], object] | None = None


P = TypeVar("P", bound=Params)


@dataclass(frozen=True)
class Defence(Generic[P]):
    name: str
    apply: Callable[[Sequence[Sample], DefenceContext, P], tuple[list[Sample], dict[str, Any]]]
    """(samples, context, parameters) → (defended samples, cost: n_in, n_out, kept and changed fractions, …)."""
    description: str = ""
    params: type[P] = NoParams  # type: ignore[assignment]
    """Its parameters; their values key the defend stage."""
    needs_scores: bool = False
    """One detector score per sample (the defend stage computes them against the control data)."""
    needs_model: bool = False
    """A model of another family that rewrites the completions, shown examples from the control data."""
    needs_reads: bool = False
    """The data's divergence map under the reference model."""
    needs_continuation: bool = False
    """The reference's greedy continuations (their token budget keys the stage)."""

    def build(self, given: dict[str, Any], where: str) -> P:
        """Its parameters from ``given`` (values of its fields; others ignored: the [defence] config and the flags
        hold every defence's), or a one-line error naming the key at ``where``."""
        mine = {k: v for k, v in given.items() if k in self.params.model_fields}
        try:
            return build_params(self.params, mine, where)  # type: ignore[return-value]
        except ValueError as exc:
            raise SublimError(str(exc)) from None


DEFENCES: Registry[Defence[Any]] = Registry("defence")


def read_under(reader: TokenReader, samples: Sequence[Sample], bf16: bool | None, max_new_tokens: int,
               batch_size: int, progress: Callable[[int], object] | None = None) -> ReferenceReads:
    """What the divergence defences read under the reference model ``reader``: the map of ``samples`` (``progress``
    counts them), its vocabulary, re-reads of changed samples and greedy continuations (``max_new_tokens``, in
    batches of ``batch_size``)."""
    return ReferenceReads(reader.divergence_map(samples, bf16=bf16, progress=progress), reader.vocabulary(),
                          lambda ss: reader.divergence_map(ss, bf16=bf16),
                          lambda ss: reader.continuations(ss, max_new_tokens=max_new_tokens, batch_size=batch_size))


def defence_context(defence: Defence[Any], samples: Sequence[Sample], base: DefenceContext, *,
                    reader: TokenReader | None = None, bf16: bool | None = None,
                    map_progress: Callable[[int], object] | None = None) -> DefenceContext:
    """What ``defence`` is given, built one way for ``sublim defend`` and the defend stage: ``base`` (seed, carrier
    check, decoding and whatever of scores, model and examples the caller has) with each thing the defence needs
    checked present, and the data read under the reference ``reader`` when it needs those reads."""
    if defence.needs_scores and (base.scores is None or len(base.scores) != len(samples)):
        raise SublimError(f"defence {defence.name} needs one detector score per sample (run an audit first)")
    if defence.needs_model and base.model is None:
        raise SublimError(f"defence {defence.name} needs a model of another family to rewrite the completions")
    if not (defence.needs_reads or defence.needs_continuation):
        return base
    if reader is None:
        raise SublimError(f"defence {defence.name} reads the data under the reference model: give the reference "
                          "model")
    return replace(base, reads=read_under(reader, samples, bf16, base.max_new_tokens, base.batch_size, map_progress))
