"""What one client may ask of ``sublim serve``: body sizes, tokens, time, queue places."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Limits:
    """What one client may ask of the server; every limit is checked before any model work."""

    max_body_bytes: int = 1 << 20
    """Request bodies above this are refused with 413 before they are read (uploads: ``max_upload_bytes``)."""
    max_upload_bytes: int = 64 << 20
    max_context_tokens: int = 2048
    """Prompt plus completion tokens of one request (capped by the model's own context length)."""
    max_new_tokens: int = 1024
    max_request_tokens: int = 16384
    """n × (prompt + max_tokens): the token budget of one request (summed over a completions request's prompts)."""
    generation_s: float = 120.0
    """Wall-clock limit of one batch's generation: the worker is never held longer by any request."""
    queue: int = 256
    """Requests waiting for a model at most; beyond it, 503 with Retry-After."""
    read_s: float = 30.0
    """The most time a client may take to send one request (line, headers and body), however slowly it trickles."""
    short_request_tokens: int = 512
    """n × max_tokens at most for the short lane: such requests are served by a thread of their own, so a long
    request (up to the generation time limit) never holds them back."""

    def for_model(self, model: Any) -> Limits:
        """These limits with the context no larger than the model's."""
        ctx = getattr(getattr(model, "config", None), "max_position_embeddings", None)
        if isinstance(ctx, int) and ctx > 0 and ctx < self.max_context_tokens:
            return Limits(**{**self.__dict__, "max_context_tokens": ctx})
        return self
