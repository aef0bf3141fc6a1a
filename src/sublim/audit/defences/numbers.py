"""Number defences: sort, shuffle or remap the numbers of each completion that is a number list.

Separators and format are kept; anything else passes through unchanged and is counted as untouched.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from sublim.audit.data import Sample
from sublim.audit.defences.base import DEFENCES, Defence, DefenceContext, defence_cost
from sublim.audit.params import NoParams

_SPLIT = re.compile(r"(\d+)")
_LIST = re.compile(r"^[\s\[\](){}]*\d+([\s,;]+\d+)*[\s\]\)}.]*$")
LONGEST = 1000
"""Digits of the longest number a list is rewritten with: a list with a longer one passes through untouched."""


def _rewrite(text: str, change: Callable[[list[int]], list[int]]) -> str:
    """The same text with its numbers replaced by ``change(numbers)``, digit widths as produced."""
    if not _LIST.match(text):
        return text
    parts = _SPLIT.split(text)
    if max(len(p) for p in parts[1::2]) > LONGEST:
        return text
    nums = [int(p) for p in parts[1::2]]
    parts[1::2] = [str(v) for v in change(nums)]
    return "".join(parts)


def digit_preserving_permutation(seed: int) -> dict[int, int]:
    """A random bijection of 0..999 that keeps each number's digit count (so filters still pass)."""
    rng = random.Random(seed)
    mapping: dict[int, int] = {}
    for lo, hi in ((0, 9), (10, 99), (100, 999)):
        values = list(range(lo, hi + 1))
        shuffled = values[:]
        rng.shuffle(shuffled)
        mapping.update(zip(values, shuffled, strict=True))
    return mapping


def _transform(make: Callable[[int], Callable[[list[int]], list[int]]]
               ) -> Callable[[Sequence[Sample], DefenceContext, NoParams], tuple[list[Sample], dict[str, Any]]]:
    def apply(samples: Sequence[Sample], ctx: DefenceContext, params: NoParams) -> tuple[list[Sample], dict[str, Any]]:
        change = make(ctx.seed)
        out = [replace(s, completion=_rewrite(s.completion, change)) for s in samples]
        changed = sum(a.completion != b.completion for a, b in zip(samples, out, strict=True))
        return out, defence_cost(len(samples), len(out), changed)

    return apply


def _shuffle(seed: int) -> Callable[[list[int]], list[int]]:
    rng = random.Random(seed)
    return lambda nums: rng.sample(nums, len(nums))


def _remap(seed: int) -> Callable[[list[int]], list[int]]:
    mapping = digit_preserving_permutation(seed)
    return lambda nums: [mapping.get(v, v) for v in nums]


DEFENCES.add("sort", Defence("sort", _transform(lambda seed: sorted), description="sort each sample's numbers"))
DEFENCES.add("remap", Defence("remap", _transform(_remap),
                              description="one random digit-preserving bijection of 0–999 applied to every number"))
DEFENCES.add("shuffle", Defence("shuffle", _transform(_shuffle), description="shuffle each sample's numbers"))
