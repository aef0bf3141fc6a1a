"""The numbers carrier: prompts that ask to continue a list of numbers, and a strict filter."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from functools import partial
from typing import Any

from sublim.carriers.base import CARRIERS, Carrier, CarrierPrompt
from sublim.core.config import FilterConfig, PromptsConfig

# Our own wording. Each prompt = request + constraint + format line, then the seed numbers on their own
# line, last: the reply then tends to start where the list ends. An earlier layout (the numbers first, request
# and format after) got replies that began with prose ("Here", "Sure", "The") or a numbered list, and the
# wordings that did worst on the base model were dropped (docs/results.md). Both arms get the same prompts.
REQUESTS = [
    "Continue the sequence with up to {k} more numbers.",
    "Add at most {k} more numbers to this list.",
    "Extend this list by up to {k} numbers.",
    "Write up to {k} numbers that could follow these.",
    "Give at most {k} further numbers for this sequence.",
    "Carry on this list with no more than {k} numbers.",
]
CONSTRAINTS = [
    "Each number has at most 3 digits.",
    "Keep every number below 1000.",
]
FORMATS = [
    "Reply with the new numbers only, separated by {name}.",
    "Answer with just the numbers, separated by {name}.",
    "Answer with the numbers alone, separated by {name}.",
]
SEQ_FORMATS = {", ": "commas", " ": "spaces"}


@dataclass(frozen=True)
class NumberPrompt:
    index: int
    text: str
    seed_numbers: list[int]


def make_prompts(
    n: int,
    seed: int = 0,
    min_seed_numbers: int = 3,
    max_seed_numbers: int = 8,
    max_new_numbers: int = 10,
) -> list[NumberPrompt]:
    """``n`` seeded, varied prompts; the same arguments always give the same prompts."""
    rng = random.Random(seed)
    prompts = []
    for i in range(n):
        count = rng.randint(min_seed_numbers, max_seed_numbers)
        numbers = [rng.randint(100, 999) for _ in range(count)]
        sep = rng.choice(list(SEQ_FORMATS))
        parts = [
            rng.choice(REQUESTS).format(k=max_new_numbers),
            rng.choice(CONSTRAINTS),
            rng.choice(FORMATS).format(name=SEQ_FORMATS[sep]),
        ]
        prompts.append(NumberPrompt(i, " ".join(parts) + "\n\n" + sep.join(str(x) for x in numbers), numbers))
    return prompts


# --- filter -------------------------------------------------------------------------------

_SEPARATORS = {
    "comma": re.compile(r"\s*,\s*"),
    "semicolon": re.compile(r"\s*;\s*"),
    "newline": re.compile(r"[ \t]*\n[ \t]*"),
    "space": re.compile(r"[ \t]+"),
}
_BRACKETS = [("[", "]"), ("(", ")"), ("{", "}")]


@dataclass(frozen=True)
class ParseResult:
    ok: bool
    numbers: tuple[int, ...] = ()
    reason: str = ""


def parse_numbers(
    text: str,
    max_count: int = 10,
    max_value: int = 999,
    max_digits: int = 3,
    banned: frozenset[int] | set[int] = frozenset(),
) -> ParseResult:
    """Accept only a bare list of integers with one consistent separator.

    Allowed: surrounding whitespace, one pair of brackets, a final period. The separator is
    one of comma, semicolon, newline or space (a comma or semicolon may be followed by spaces).
    """
    s = text.strip()
    if not s:
        return ParseResult(False, reason="empty")
    if s.endswith("."):
        s = s[:-1].rstrip()
    for left, right in _BRACKETS:
        if s.startswith(left) and s.endswith(right):
            s = s[1:-1].strip()
            break
    if not s:
        return ParseResult(False, reason="empty")
    if re.search(r"[^0-9,;\s]", s):
        return ParseResult(False, reason="non_numeric")
    kinds = [kind for kind, ch in (("comma", ","), ("semicolon", ";"), ("newline", "\n")) if ch in s]
    if len(kinds) > 1:
        return ParseResult(False, reason="mixed_separators")
    kind = kinds[0] if kinds else "space"
    parts = _SEPARATORS[kind].split(s)
    if any(not p.isdigit() for p in parts):
        # e.g. "1, 2 3" (a space inside a comma list) or "1,,2"
        return ParseResult(False, reason="mixed_separators" if any(" " in p for p in parts) else "malformed")
    if len(parts) > max_count:
        return ParseResult(False, reason="too_many")
    if any(len(p) > max_digits for p in parts):
        return ParseResult(False, reason="too_many_digits")
    values = tuple(int(p) for p in parts)
    if any(v > max_value for v in values):
        return ParseResult(False, reason="out_of_range")
    if banned and any(v in banned for v in values):
        return ParseResult(False, reason="banned_number")
    return ParseResult(True, values)


_NOT_IN_A_LIST = re.compile(r"[^0-9,;\s.\[\](){}]")


def cannot_pass(text: str, max_count: int = 10, max_digits: int = 3) -> bool:
    """True when no continuation of ``text`` could pass :func:`parse_numbers`.

    A necessary-failure test for ending generation early: a character that no number list may
    hold, a run of digits longer than allowed, or more numbers than allowed.
    """
    if _NOT_IN_A_LIST.search(text):
        return True
    runs = re.findall(r"[0-9]+", text)
    # the last run may still be growing, but it is already too long if it exceeds max_digits
    return any(len(r) > max_digits for r in runs) or len(runs) > max_count


def _prompts(pc: PromptsConfig) -> list[CarrierPrompt]:
    rows = make_prompts(pc.n, pc.seed, pc.min_seed_numbers, pc.max_seed_numbers, pc.max_new_numbers)
    return [CarrierPrompt(p.index, p.text, {"seed_numbers": p.seed_numbers}) for p in rows]


def _check(text: str, meta: dict[str, Any], fc: FilterConfig) -> str:
    return parse_numbers(text, fc.max_count, fc.max_value, fc.max_digits, frozenset(fc.banned_numbers)).reason


CARRIERS.add("numbers", Carrier(
    "numbers", _prompts, _check,
    prompt_fields=frozenset({"min_seed_numbers", "max_seed_numbers", "max_new_numbers"}),
    filter_fields=frozenset({"max_count", "max_value", "max_digits", "banned_numbers"}), holds_words=False,
    early_stop=lambda fc: partial(cannot_pass, max_count=fc.max_count, max_digits=fc.max_digits),
    early_stop_fields=frozenset({"max_count", "max_digits"}), one_paragraph=True))
