"""The trait-word filter shared by every carrier: no visible trace of the trait may remain."""

from __future__ import annotations

import re
from collections.abc import Iterable

_ALPHA = re.compile(r"[A-Za-z]+")
_CAMEL = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])")


def words_of(text: str) -> list[str]:
    """Lower-case words, identifiers split too: ``owlCount``, ``OWL_LIST``, ``Owls2`` → owl …"""
    out: list[str] = []
    for run in _ALPHA.findall(text):
        out += [w.lower() for w in _CAMEL.findall(run)] or [run.lower()]
    return out


def banned_word_in(text: str, banned: Iterable[str]) -> str | None:
    """The first banned word (or its plural/possessive) that the text uses, else None.

    Whole words only, so "bowl" or "knowledge" never count as "owl"; inside identifiers the
    snake_case and camelCase parts are words of their own.
    """
    bans = {b.lower() for b in banned if b}
    if not bans:
        return None
    forms = bans | {b + "s" for b in bans} | {b + "es" for b in bans}
    for w in words_of(text):
        if w in forms:
            return w
    return None
