"""A transformers model in this process: loading (catalog, GGUF, directories), generation, exact
answer probabilities, completion log-probabilities, and fine-tuning through the training loop."""

from sublim.backends.local.backend import LocalBackend, ModelCache
from sublim.backends.local.loading import CATALOG, LoadedModel, load_model, resolve_model, save_model

__all__ = ["CATALOG", "LoadedModel", "LocalBackend", "ModelCache", "load_model", "resolve_model", "save_model"]
