"""What a trait kind is: how a teacher is given the trait, how an arm is measured, what the results say.

The runner walks the same arm plan for every kind; a kind answers the questions that differ.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Protocol

from sublim.backends import Backend
from sublim.core.files import Rows
from sublim.core.store import Artifact
from sublim.experiment.context import Context


class TraitKind(Protocol):
    traits: list[str]
    """The trait values that get a teacher and a student (the control is always added)."""

    def teacher_data(self, target: str, seed: int) -> tuple[list[tuple[str, str]], dict[str, Any], str]:
        """(prompt, completion) pairs that give a fine-tuned teacher (of ``seed``) the trait, the teacher stage's
        config slice, and the induction in words (for lineage)."""
        ...

    def neutral_teacher_data(self, seed: int) -> tuple[list[tuple[str, str]], dict[str, Any], str] | None:
        """The same for a neutral teacher (the same recipe without the trait), or None where the kind has none."""
        ...

    def banned_words(self) -> list[str]:
        """Words no dataset may hold (the traits' own names)."""
        ...

    def hint(self) -> str:
        """The traits in words, for an LLM judge screening the data."""
        ...

    def session(self, ctx: Context) -> contextlib.AbstractContextManager[None]:
        """What must exist while arms are measured (a judge model)."""
        ...

    def evaluate(self, ctx: Context, model: Backend, seed: int) -> Rows:
        """Measure one arm: per-question (or per-answer) rows."""
        ...

    def gate(self, target: str, rows: Rows) -> None:
        """Stop the run (SublimError) when a teacher lacks the trait."""
        ...

    def results(self, arms: dict[str, list[Rows]], data: dict[str, Artifact]) -> dict[str, Any]:
        """The kind's part of results.json (arms, effects, verdict)."""
        ...


@contextlib.contextmanager
def nothing() -> Iterator[None]:
    yield
