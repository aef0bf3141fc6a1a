"""Model loading, the catalog, generation and next-token probabilities."""

from sublim.models.generation import Completion, chat_text, generate_batch, next_token_probs
from sublim.models.loading import CATALOG, LoadedModel, load_model, resolve_model, save_model

__all__ = [
    "CATALOG",
    "Completion",
    "LoadedModel",
    "chat_text",
    "generate_batch",
    "load_model",
    "next_token_probs",
    "resolve_model",
    "save_model",
]
