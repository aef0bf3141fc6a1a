"""The keyword a model's forward takes its KV cache by, across transformers versions."""

from __future__ import annotations

import inspect
from typing import Any


def cache_arg(model: Any) -> str:
    """``cache`` in recent transformers, ``past_key_values`` before."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(inner.forward).parameters else "past_key_values"
