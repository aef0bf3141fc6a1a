"""What a carrier is, and the registry of carriers.

A carrier is the trait-free task a teacher writes data for. It is one file that builds a
:class:`Carrier` and adds it to :data:`CARRIERS`: its prompts, its check of one completion
('' when kept, else the reject reason), what of the config those read (so that stage keys hash
only that), and optionally a test that ends generation of a row once it can no longer pass.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from sublim.carriers.words import banned_word_in
from sublim.core.config import FilterConfig, PromptsConfig
from sublim.core.registry import Registry


@dataclass(frozen=True)
class CarrierPrompt:
    index: int
    text: str
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Carrier:
    name: str
    prompts: Callable[[PromptsConfig], list[CarrierPrompt]]
    """The prompts for a config; the same config always gives the same prompts."""
    check: Callable[[str, dict[str, Any], FilterConfig], str]
    """(completion, the prompt's meta, filter config) → '' when kept, else why not."""
    prompt_fields: frozenset[str] = frozenset()
    """[prompts] fields the prompts read besides carrier, n and seed."""
    filter_fields: frozenset[str] = frozenset()
    """[filter] fields the check reads besides require_eos."""
    holds_words: bool = True
    """False when a kept completion can hold no words, so word bans cannot change what is kept."""
    early_stop: Callable[[FilterConfig], Callable[[str], bool]] | None = None
    """A test that a row's text so far can never pass, to end its generation early."""
    early_stop_fields: frozenset[str] = frozenset()
    """[filter] fields the early stop reads (they decide where rows are cut, so they key generation)."""
    needs_meta: bool = False
    """The check needs the prompt's meta (e.g. the right answer), which a plain dataset file lacks."""
    one_paragraph: bool = False
    """A completion is one paragraph: a model rewriting it stops at the first blank line."""


CARRIERS: Registry[Carrier] = Registry("carrier")


@dataclass
class FilterReport:
    total: int = 0
    kept: int = 0
    reasons: Counter[str] = field(default_factory=Counter)

    @property
    def pass_rate(self) -> float:
        return self.kept / self.total if self.total else 0.0

    def as_dict(self) -> dict[str, object]:
        return {"total": self.total, "kept": self.kept, "pass_rate": self.pass_rate,
                "reject_reasons": dict(self.reasons.most_common())}


def carrier_prompts(pc: PromptsConfig) -> list[CarrierPrompt]:
    return CARRIERS.get(pc.carrier, "prompts.carrier").prompts(pc)


def check_completion(carrier: str, text: str, meta: dict[str, Any], fc: FilterConfig,
                     banned_words: Iterable[str] = (), finished: bool = True) -> str:
    """'' if the completion is kept, else why not (the carrier's own check comes first; a completion cut
    off before its end is "truncated" when the filter requires one)."""
    reason = CARRIERS.get(carrier, "prompts.carrier").check(text, meta, fc)
    if reason:
        return reason
    if banned_word_in(text, banned_words):
        return "trait_word"
    return "truncated" if fc.require_eos and not finished else ""


def early_stop(carrier: str, fc: FilterConfig) -> Callable[[str], bool] | None:
    """A test that ends a row once it can no longer pass, or None when the carrier has none."""
    c = CARRIERS.get(carrier, "prompts.carrier")
    return c.early_stop(fc) if c.early_stop is not None else None
