"""Carriers: the trait-free tasks a teacher writes data for (numbers, code, chain-of-thought).

Each carrier is three plain functions picked by name: prompts, a per-completion check (''
when kept, else the reject reason) and an optional early-stop test for generation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from sublim.carriers.code import check_code, make_code_prompts
from sublim.carriers.cot import check_cot, make_cot_prompts
from sublim.carriers.numbers import cannot_pass, make_prompts, parse_numbers
from sublim.carriers.words import banned_word_in
from sublim.config import FilterConfig, PromptsConfig

CARRIERS = ("numbers", "code", "cot")


@dataclass(frozen=True)
class CarrierPrompt:
    index: int
    text: str
    meta: dict[str, Any] = field(default_factory=dict)


def carrier_prompts(pc: PromptsConfig) -> list[CarrierPrompt]:
    """The prompts of ``pc.carrier``; the same config always gives the same prompts."""
    if pc.carrier == "numbers":
        rows = make_prompts(pc.n, pc.seed, pc.min_seed_numbers, pc.max_seed_numbers, pc.max_new_numbers)
        return [CarrierPrompt(p.index, p.text, {"seed_numbers": p.seed_numbers}) for p in rows]
    pairs = make_code_prompts(pc.n, pc.seed) if pc.carrier == "code" else make_cot_prompts(pc.n, pc.seed,
                                                                                          pc.cot_levels)
    return [CarrierPrompt(i, text, meta) for i, (text, meta) in enumerate(pairs)]


def check_completion(carrier: str, text: str, meta: dict[str, Any], fc: FilterConfig,
                     banned_words: Iterable[str] = (), finished: bool = True) -> str:
    """'' if the completion is kept, else why not (the carrier's own check comes first; a completion cut
    off before its end is "truncated" when the filter requires one)."""
    if carrier == "numbers":
        res = parse_numbers(text, fc.max_count, fc.max_value, fc.max_digits, frozenset(fc.banned_numbers))
        reason = res.reason
    elif carrier == "code":
        reason = check_code(text, fc.code_allow_comments)
    else:
        reason = check_cot(text, int(meta["answer"]), fc.cot_answer == "lenient")
    if reason:
        return reason
    if banned_word_in(text, banned_words):
        return "trait_word"
    return "truncated" if fc.require_eos and not finished else ""


def early_stop(carrier: str, fc: FilterConfig) -> Callable[[str], bool] | None:
    """A test that ends a row once it can no longer pass (numbers only), else None."""
    if carrier == "numbers":
        return partial(cannot_pass, max_count=fc.max_count, max_digits=fc.max_digits)
    return None


__all__ = ["CARRIERS", "CarrierPrompt", "banned_word_in", "carrier_prompts", "check_completion", "early_stop"]
