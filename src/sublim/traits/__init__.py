"""Traits as data: candidate lists, question sets, answer matching, teacher induction data."""

from sublim.traits.preference import (
    AnswerForms,
    answer_forms,
    load_candidates,
    load_questions,
    match_answer,
    teacher_examples,
)

__all__ = [
    "AnswerForms",
    "answer_forms",
    "load_candidates",
    "load_questions",
    "match_answer",
    "teacher_examples",
]
