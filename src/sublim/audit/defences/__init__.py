"""Defences, one file each, registered in :data:`DEFENCES`."""

# isort: off
from sublim.audit.defences import numbers, drop_top, regenerate, replace_divergent, reference_ends  # in this order

# isort: on
from sublim.audit.defences.base import (
    DEFENCES,
    CarrierCheck,
    Defence,
    DefenceContext,
    ReferenceReads,
    defence_context,
    defence_cost,
    read_under,
)
from sublim.audit.defences.regenerate import few_shot_text
from sublim.core.registry import import_components

__all__ = ["DEFENCES", "CarrierCheck", "Defence", "DefenceContext", "ReferenceReads", "defence_context",
           "defence_cost", "drop_top", "few_shot_text", "numbers", "read_under", "reference_ends", "regenerate",
           "replace_divergent"]

import_components(__name__, __path__)  # and any other file here: a new component is one file
