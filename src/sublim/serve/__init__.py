"""``sublim serve``: any local model over an OpenAI-compatible HTTP API (chat completions, streamed or not;
legacy completions with prompt log-probabilities; models; fine-tuning jobs), with fault injection for testing
clients."""

from sublim.serve.errors import RequestError
from sublim.serve.server import FaultPlan, make_server

__all__ = ["FaultPlan", "RequestError", "make_server"]
