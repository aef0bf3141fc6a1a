"""Backends: a model, wherever it runs. The protocol (base.py) and two implementations: a local
transformers model and an OpenAI-compatible endpoint."""

from sublim.backends.base import Backend, BackendError, Completion, Decoding, Request
from sublim.backends.local import LocalBackend, ModelCache
from sublim.backends.openai import OpenAIBackend

__all__ = ["Backend", "BackendError", "Completion", "Decoding", "LocalBackend", "ModelCache", "OpenAIBackend",
           "Request"]
