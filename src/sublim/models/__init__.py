"""Model loading, the catalog, generation and next-token probabilities."""

from sublim.models.generation import Completion, answer_probs, chat_text, generate_batch
from sublim.models.loading import CATALOG, LoadedModel, load_model, resolve_model, save_model

__all__ = [
    "answer_probs",
    "CATALOG",
    "Completion",
    "LoadedModel",
    "chat_text",
    "generate_batch",
    "load_model",
    "resolve_model",
    "save_model",
]
