"""Exact reads of a served model through ``/v1/completions`` (``echo`` with ``logprobs``, nothing generated):
every token of a given sequence scored given the ones before it, the chat template rendered here with the
model's own tokenizer. The same figures a local model gives, for a reference or a teacher served by vLLM,
SGLang or ``sublim serve``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx
import numpy as np

from sublim.backends.openai.retry import RetryPolicy, send
from sublim.core.config import EndpointConfig
from sublim.core.errors import SublimError
from sublim.train.encode import Example, encode_example

PER_REQUEST = 32
"""Sequences sent in one request (servers cap the prompts of one completions request: sublim serve at 64)."""


def token_logprobs(ep: EndpointConfig, seqs: Sequence[Sequence[int]], progress: Any = None) -> list[list[float]]:
    """Per sequence of token ids, the log-probability of each token after the first, given those before it."""
    out: list[list[float]] = []
    for start in range(0, len(seqs), PER_REQUEST):
        chunk = [list(s) for s in seqs[start : start + PER_REQUEST]]
        body = {"model": ep.model, "prompt": chunk, "max_tokens": 0, "echo": True, "logprobs": 0,
                "temperature": 0}
        choices = send(ep, RetryPolicy.of(ep), "POST", "/completions", _choices, idempotent=True, json=body)
        for i, seq in enumerate(chunk):
            got = choices.get(i)
            if got is None or len(got) < len(seq):
                raise SublimError(f"{ep.base_url}/completions answered echo without a log-probability for every "
                                  f"prompt token (sequence {start + i}): this endpoint cannot be read exactly; "
                                  "remove endpoint.tokenizer to use the estimate")
            out.append([float(x) for x in got[1 : len(seq)]])
        if progress:
            progress(len(chunk))
    return out


def _choices(resp: httpx.Response) -> dict[int, list[Any]]:
    data = resp.json()
    return {int(c["index"]): (c.get("logprobs") or {}).get("token_logprobs") or [] for c in data["choices"]}


def completions_served(ep: EndpointConfig) -> bool:
    """Whether the endpoint scores given tokens (one tiny request; an error answer means it does not)."""
    try:
        token_logprobs(ep, [[0, 0]])
    except SublimError:  # an ApiError too: a 404 (no such route) or a 400 (no echo, no logprobs)
        return False
    return True


def completion_pairs(tokenizer: Any, pairs: Sequence[tuple[str, str]], system: str | None
                     ) -> list[tuple[list[int], int]]:
    """(prompt and completion ids, the prompt's length) of each pair under the chat template, as training and a
    local model's reads encode them."""
    return [encode_example(tokenizer, Example(p, c, system)) for p, c in pairs]


def summed(rows: list[list[float]], starts: Sequence[int]) -> np.ndarray:
    """Each row's log-probabilities summed from its start (the first completion token) on."""
    return np.array([sum(r[s - 1 :]) for r, s in zip(rows, starts, strict=True)])
