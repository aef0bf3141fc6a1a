"""Backends: a model, wherever it runs. The protocol (base.py) with its token reads (what they return:
reads.py) and two implementations: a local transformers model and an OpenAI-compatible endpoint."""

from sublim.backends.base import (
    Backend,
    BackendError,
    Completion,
    Decoding,
    Request,
    TokenReader,
    TraitGradientReads,
    Vocabulary,
)
from sublim.backends.local import LocalBackend, ModelCache
from sublim.backends.local.loading import resolve_model, weight_fingerprint
from sublim.backends.openai import OpenAIBackend
from sublim.backends.reads import PLACEMENTS, DivergenceMap, FlaggedLogprobs, Text, induced

__all__ = ["PLACEMENTS", "Backend", "BackendError", "Completion", "Decoding", "DivergenceMap", "FlaggedLogprobs",
           "LocalBackend", "ModelCache", "OpenAIBackend", "Request", "Text", "TokenReader", "TraitGradientReads",
           "Vocabulary", "induced", "resolve_model", "weight_fingerprint"]
