"""Carriers: the trait-free tasks a teacher writes data for. One file each, registered in
:data:`CARRIERS`; the shipped ones are numbers, code and chain-of-thought."""

# isort: off
from sublim.carriers import numbers, code, cot  # registered in this order (numbers is the default)

# isort: on
from sublim.carriers.base import (
    CARRIERS,
    Carrier,
    CarrierPrompt,
    FilterReport,
    carrier_prompts,
    check_completion,
    early_stop,
)
from sublim.carriers.words import banned_word_in
from sublim.core.registry import import_components

__all__ = ["CARRIERS", "Carrier", "CarrierPrompt", "FilterReport", "banned_word_in", "carrier_prompts",
           "check_completion", "code", "cot", "early_stop", "numbers"]

import_components(__name__, __path__)  # and any other file here: a new component is one file
