"""Trait kinds: preference (probabilities and shares among candidates) and misalignment (judged answers)."""

from sublim.experiment.kinds.base import TraitKind
from sublim.experiment.kinds.misalignment import Misalignment
from sublim.experiment.kinds.preference import Preference

KINDS: dict[str, type[Preference] | type[Misalignment]] = {"preference": Preference, "misalignment": Misalignment}

__all__ = ["KINDS", "Misalignment", "Preference", "TraitKind"]
