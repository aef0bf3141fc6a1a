"""Traits as data: candidate lists, question sets, answer matching, teacher induction data."""

from sublim.traits.preference import (
    TraitTokens,
    load_candidates,
    load_questions,
    match_answer,
    teacher_examples,
    trait_tokens,
)

__all__ = [
    "TraitTokens",
    "load_candidates",
    "load_questions",
    "match_answer",
    "teacher_examples",
    "trait_tokens",
]
