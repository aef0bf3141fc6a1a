"""``sublim serve``: an OpenAI-compatible HTTP server for any model of the catalog, usable by the official
``openai`` SDK.

Endpoints: ``GET /v1/models`` and ``GET /v1/models/{id}``; ``POST /v1/chat/completions`` (temperature, top_p,
max_tokens, n, seed, stop, logprobs, top_logprobs; ``stream`` with ``stream_options.include_usage``; content as a
string or text parts; ``developer`` read as ``system``; tools and structured output refused with a 400);
``POST /v1/completions`` (legacy raw-text completions: prompts as text or token ids, ``echo``, ``logprobs`` with
exact prompt log-probabilities, ``max_tokens`` 0); fine-tuning (``POST /v1/files``, ``/v1/fine_tuning/jobs``:
create, list, get, events, cancel); ``GET /health``. Concurrent requests with the same decoding settings are
batched into one ``generate`` call. Errors use the OpenAI error body.

For testing clients (ours or anyone's), the server can inject faults at given rates: 429 with
Retry-After, 500, responses slower than a client's timeout, and malformed JSON bodies.

The rooms: ``limits`` (what a client may ask), ``faults`` (what is injected), ``parsing`` and ``completions``
(request bodies), ``worker`` (the model), ``service`` (what the routes share), ``handler`` (HTTP), ``routes``
(one function per route), ``stream`` (server-sent events), ``finetune`` (jobs); here they are put together.
"""

from __future__ import annotations

import sys
from http.server import ThreadingHTTPServer
from typing import Any

from sublim.core.errors import SublimError
from sublim.serve.faults import FAULT_KINDS, FaultPlan
from sublim.serve.limits import Limits
from sublim.serve.parsing import parse_chat_request
from sublim.serve.paths import CHAT, COMPLETIONS, JOBS
from sublim.serve.routes import Routes
from sublim.serve.service import Service
from sublim.serve.worker import GenRequest, ModelWorker

__all__ = ["CHAT", "COMPLETIONS", "FAULT_KINDS", "JOBS", "FaultPlan", "GenRequest", "Limits", "ModelWorker",
           "make_server", "parse_chat_request"]


def make_handler(svc: Service) -> type[Routes]:
    """The request handler class of one server: the routes, serving ``svc``."""

    class Handler(Routes):
        pass

    Handler.svc = svc
    return Handler


def make_server(model: Any, tokenizer: Any, name: str, host: str = "127.0.0.1", port: int = 8000,
                faults: FaultPlan | None = None, api_key: str | None = None,
                max_batch: int = 32, limits: Limits | None = None) -> ThreadingHTTPServer:
    """A ready-to-run server (call ``serve_forever``); port 0 picks a free port. SublimError when the address
    cannot be listened on."""
    svc = Service(name, model, tokenizer, max_batch, faults, api_key, limits)
    try:
        server = _Server((host, port), make_handler(svc))
    except OSError as exc:
        raise SublimError(f"cannot listen on {host}:{port} ({exc.strerror or exc}): pick another --port (0 picks a "
                          "free one) or --host") from None
    server.daemon_threads = True
    return server


class _Server(ThreadingHTTPServer):
    request_queue_size = 128  # the listen backlog: the library's 5 resets clients when many connect at once

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, ConnectionError | TimeoutError):  # a client that gave up: not our error
            return
        super().handle_error(request, client_address)
