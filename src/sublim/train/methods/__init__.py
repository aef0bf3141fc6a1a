"""Student methods, one file each, registered in :data:`METHODS`."""

# isort: off
from sublim.train.methods import sft, lora, distill_full, distill_restricted  # registered in this order

# isort: on
from sublim.core.registry import import_components
from sublim.train.methods.base import METHODS, StudentMethod

__all__ = ["METHODS", "StudentMethod", "distill_full", "distill_restricted", "lora", "sft"]

import_components(__name__, __path__)  # and any other file here: a new component is one file
