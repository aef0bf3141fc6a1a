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
"""

from __future__ import annotations

import contextlib
import json
import queue
import random
import socket
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote

from sublim.core.errors import SublimError
from sublim.serve import stream
from sublim.serve.completions import completion_response, parse_completion_request
from sublim.serve.errors import RequestError
from sublim.serve.finetune import FineTuning
from sublim.serve.parsing import parse_chat_request, streaming
from sublim.serve.worker import GenRequest, Limits, ModelWorker

__all__ = ["CHAT", "COMPLETIONS", "FAULT_KINDS", "JOBS", "FaultPlan", "GenRequest", "Limits", "ModelWorker",
           "make_server", "parse_chat_request"]

FAULT_KINDS = ("429", "500", "500_after", "slow", "malformed")
"""429 with Retry-After and 500 before any work; 500_after: the work is done, then the answer is a 500 (did it
happen? the worst case for a client); slow: an answer later than a client's timeout; malformed: a broken body."""
CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
JOBS = "/v1/fine_tuning/jobs"
MODELS = "/v1/models"


@dataclass
class FaultPlan:
    """Rates (0–1) of injected faults per request to ``routes``, drawn from a seeded generator."""

    rates: dict[str, float] = field(default_factory=dict)
    seed: int = 0
    slow_s: float = 5.0
    counts: Counter[str] = field(default_factory=Counter)
    routes: tuple[str, ...] = (CHAT,)
    """The POST routes faults are injected into (chat completions; fine-tuning job creation too, if named)."""

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._lock = threading.Lock()

    @classmethod
    def parse(cls, text: str, seed: int = 0, slow_s: float = 5.0, routes: tuple[str, ...] = (CHAT,)) -> FaultPlan:
        """``"429=0.1,500=0.05,slow=0.05,malformed=0.05"`` → a plan."""
        rates: dict[str, float] = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            kind, _, value = part.partition("=")
            try:
                rate = float(value)
            except ValueError:
                rate = -1.0
            if kind not in FAULT_KINDS or not 0 <= rate <= 1:
                raise SublimError(f"bad fault {part!r}: write KIND=RATE with KIND in "
                                  f"{', '.join(FAULT_KINDS)} and RATE in 0..1, comma-separated")
            rates[kind] = rate
        if sum(rates.values()) > 1:
            raise SublimError(f"fault rates {text!r} add up to more than 1")
        return cls(rates, seed, slow_s, routes=routes)

    def draw(self, route: str = CHAT) -> str | None:
        if route not in self.routes:
            return None
        with self._lock:
            u = self._rng.random()
            acc = 0.0
            for kind in FAULT_KINDS:
                acc += self.rates.get(kind, 0.0)
                if u < acc:
                    self.counts[kind] += 1
                    return kind
            self.counts["ok"] += 1
            return None


class Service:
    """What the handler needs: the served models (base and fine-tuned), fine-tuning, faults, a key."""

    def __init__(self, name: str, model: Any, tokenizer: Any, max_batch: int = 32, faults: FaultPlan | None = None,
                 api_key: str | None = None, limits: Limits | None = None) -> None:
        self.name, self.tok, self.max_batch = name, tokenizer, max_batch
        self.limits = limits or Limits()
        self.workers = {name: ModelWorker(model, tokenizer, max_batch, limits=self.limits)}
        self.created = {name: int(time.time())}
        self.faults, self.api_key = faults or FaultPlan(), api_key
        self.timeout_s = 2 * self.limits.generation_s + 30
        """How long a request waits for its batch: its own generation and one batch ahead of it."""
        self.served = Counter[str]()
        self.fine_tuning = FineTuning(model, tokenizer, name, self.register)

    def register(self, name: str, model: Any) -> None:
        self.workers[name] = ModelWorker(model, self.tok, self.max_batch, limits=self.limits)
        self.created[name] = int(time.time())

    def worker_for(self, body: Any) -> ModelWorker:
        if not isinstance(body, dict):
            raise RequestError(400, "request body must be a JSON object")
        name = body.get("model") or self.name
        if not isinstance(name, str):
            raise RequestError(400, "'model' must be a string", "model")
        if name not in self.workers:
            raise RequestError(404, f"model {name!r} is not served here; this server has "
                                    f"{', '.join(map(repr, self.workers))} (see GET /v1/models)", "model")
        return self.workers[name]

    def models(self, path: str) -> dict[str, Any]:
        """``GET /v1/models`` (the list) or ``GET /v1/models/{id}`` (one model; 404 naming the served ones)."""
        if path in (MODELS, MODELS + "/"):
            return {"object": "list", "data": [self._model(n) for n in self.created]}
        if not path.startswith(MODELS + "/"):
            raise RequestError(404, f"no route GET {path}: try /v1/models or /health")
        return self._model(unquote(path[len(MODELS) + 1:]))

    def _model(self, name: str) -> dict[str, Any]:
        if name not in self.created:
            raise RequestError(404, f"model {name!r} is not served here; this server has "
                                    f"{', '.join(map(repr, self.created))} (see GET /v1/models)", "model")
        return {"id": name, "object": "model", "created": self.created[name], "owned_by": "sublim"}



def make_handler(svc: Service) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "sublim-serve"
        timeout = 30  # a client that stops sending mid-request loses its connection, not a server thread

        def log_message(self, format: str, *args: Any) -> None:  # quiet: one line per error only
            pass

        def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
            """The base class's own errors (a malformed request line, an unsupported method) as OpenAI JSON."""
            self.close_connection = True
            if self.request_version == "HTTP/0.9":  # an unparsable request line: answer with a status line anyway
                self.request_version = "HTTP/1.0"
            self._error(code, message or explain or "bad request")

        def handle_one_request(self) -> None:
            """Every request gets an answer: a bug in a handler is a 500 with a JSON body, never a dropped
            connection or a traceback sent to the client. Reading a request (its line, headers and body) has
            ``Limits.read_s`` in all: a client that trickles bytes loses its connection then."""
            self._deadline = threading.Timer(svc.limits.read_s, self._cut)
            self._deadline.daemon = True
            self._deadline.start()
            try:
                super().handle_one_request()
            except (ConnectionError, TimeoutError):
                self.close_connection = True
            except Exception as exc:  # the server keeps serving; one line on stderr says what failed
                print(f"sublim serve: internal error on {self.command} {self.path}: {type(exc).__name__}: {exc}",
                      file=sys.stderr)
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self._error(500, f"internal server error ({type(exc).__name__})", kind="server_error")
            finally:
                self._deadline.cancel()

        def _cut(self) -> None:
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RD)  # the pending read returns: the request ends

        def _read(self) -> None:
            """The request is read: the reading deadline no longer applies (the answer may take longer)."""
            self._deadline.cancel()

        def _refuse_method(self) -> None:
            self.close_connection = True
            self._error(405, f"method {self.command} is not allowed on {self.path}: use GET or POST",
                        headers={"Allow": "GET, POST"})

        do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _refuse_method

        def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
            self._send(status, json.dumps(obj).encode(), headers)

        def _error(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error",
                   headers: dict[str, str] | None = None) -> None:
            self._json(status, {"error": {"message": message, "type": kind, "param": param, "code": None}},
                       headers)

        def _authorized(self) -> bool:
            if svc.api_key is None:
                return True
            if self.headers.get("Authorization", "") == f"Bearer {svc.api_key}":
                return True
            self._error(401, "invalid or missing API key (send Authorization: Bearer <key>)",
                        kind="authentication_error")
            return False

        def do_GET(self) -> None:
            self._read()
            if self.path == "/health":
                self._json(200, {"status": "ok", "model": svc.name, "faults": dict(svc.faults.counts),
                                 "served": dict(svc.served)})
            elif self.path.startswith(MODELS):
                if self._authorized():
                    self._guarded(lambda: svc.models(self.path.partition("?")[0]))
            elif self.path.startswith("/v1/fine_tuning/jobs"):
                if self._authorized():
                    path, _, query = self.path.partition("?")
                    self._guarded(lambda: svc.fine_tuning.route_get(path, parse_qs(query)))
            else:
                self._error(404, f"no route GET {self.path}: try /v1/models or /health")

        def _guarded(self, make: Any) -> None:
            try:
                self._json(200, make())
            except RequestError as exc:
                self._error(exc.status, exc.message, exc.param)

        def do_POST(self) -> None:
            raw = self._read_body()
            self._read()
            if raw is None or not self._authorized():
                return
            route = self.path.split("?")[0]
            if route == "/v1/files":
                self._guarded(lambda: svc.fine_tuning.upload(self.headers.get("Content-Type", ""), raw))
                return
            if route.startswith(JOBS + "/") and route.endswith("/cancel"):
                self._guarded(lambda: svc.fine_tuning.cancel(route.split("/")[4]))
                return
            if route not in (CHAT, COMPLETIONS, JOBS):
                self._error(404, f"no route POST {self.path}: try {CHAT} or {COMPLETIONS}")
                return
            fault = svc.faults.draw(route)
            if self._injected(fault):
                return
            try:
                body = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                self._error(400, f"body is not valid JSON: {exc}")
                return
            {JOBS: self._create_job, CHAT: self._chat, COMPLETIONS: self._completions}[route](body, fault)

        def _injected(self, fault: str | None) -> bool:
            """Answer an injected 429 or 500 (True: answered), or sleep through a slow one."""
            if fault == "429":
                self._error(429, "rate limited (injected)", kind="rate_limit_error", headers={"Retry-After": "0.2"})
                return True
            if fault == "500":
                self._error(500, "server error (injected)", kind="server_error")
                return True
            if fault == "slow":
                time.sleep(svc.faults.slow_s)
            return False

        def _create_job(self, body: Any, fault: str | None) -> None:
            try:
                job = svc.fine_tuning.create(body if isinstance(body, dict) else {})
            except RequestError as exc:
                self._error(exc.status, exc.message, exc.param)
                return
            if fault == "500_after":  # the job exists; the client is told otherwise
                self._error(500, "server error after the job was created (injected)", kind="server_error")
                return
            self._json(200, job)

        def _chat(self, body: Any, fault: str | None) -> None:
            try:
                worker = svc.worker_for(body)
                req = parse_chat_request(body, worker.tok, worker.limits)
                to_stream, usage = streaming(body)
            except RequestError as exc:
                self._error(exc.status, exc.message, exc.param)
                return
            model = str(body.get("model") or svc.name)
            to_stream = to_stream and fault not in ("malformed", "500_after")  # those answer as if not streamed
            chunks = stream.Chunks(model, usage)
            if to_stream and not req.logprobs:  # the text goes out as it is generated
                req.stream = queue.Queue()
                if self._submit(worker, [req]) and stream.send_live(self, chunks, req, worker, svc.timeout_s):
                    svc.served["completions"] += 1
                return
            if not self._answer(worker, [req]):
                return
            if fault == "malformed":
                self._send(200, b'{"id": "chatcmpl-broken", "choices": [{"index": 0, "mess')
                return
            if fault == "500_after":
                self._error(500, "server error after generating (injected)", kind="server_error")
                return
            if to_stream:
                stream.send_done(self, chunks, req, worker.tok)
            else:
                self._json(200, _response(model, req))
            svc.served["completions"] += 1

        def _submit(self, worker: ModelWorker, reqs: list[GenRequest]) -> bool:
            """Queue ``reqs``; False after answering 503 when the worker's queue is full."""
            try:
                for req in reqs:
                    worker.submit(req)
            except RequestError as exc:
                self._error(exc.status, exc.message, kind="server_error", headers={"Retry-After": "1"})
                return False
            return True

        def _answer(self, worker: ModelWorker, reqs: list[GenRequest]) -> bool:
            """Submit ``reqs`` and wait for them; False after answering the error (busy, too slow, failed)."""
            if not self._submit(worker, reqs):
                return False
            deadline = time.monotonic() + svc.timeout_s
            if not all(req.done.wait(max(0.0, deadline - time.monotonic())) for req in reqs):
                self._error(503, f"server busy: no answer within {svc.timeout_s:.0f} s; retry later",
                            kind="server_error", headers={"Retry-After": "5"})
                return False
            failed = next((req for req in reqs if req.result is None), None)
            if failed is not None:
                self._error(500, f"generation failed: {type(failed.error).__name__}: {str(failed.error)[:200]}",
                            kind="server_error")
                return False
            return True

        def _completions(self, body: Any, fault: str | None) -> None:
            try:
                worker = svc.worker_for(body)
                reqs, texts, echo = parse_completion_request(body, worker.tok, worker.limits)
            except RequestError as exc:
                self._error(exc.status, exc.message, exc.param)
                return
            if self._answer(worker, reqs):
                model = str(body.get("model") or svc.name)
                self._json(200, completion_response(worker.tok, model, reqs, texts, echo))
                svc.served["text_completions"] += 1

        def _discard(self, length: int, most: int = 32 << 20) -> None:
            """Read and drop an oversized body in small chunks (memory stays flat), so that the client, still
            sending, reads the 413 rather than a reset connection; a body over ``most`` is not waited for."""
            left = length if 0 < length <= most else 0
            while left > 0:
                chunk = self.rfile.read(min(left, 1 << 16))
                if not chunk:
                    break
                left -= len(chunk)

        def _read_body(self) -> bytes | None:
            """The body, or None after answering 411/413 (an oversized body is never read: the connection closes)."""
            limit = svc.limits.max_upload_bytes if self.path.split("?")[0] == "/v1/files" else svc.limits.max_body_bytes
            if "Content-Length" not in self.headers:
                if "Transfer-Encoding" not in self.headers:
                    return b""  # a bodiless POST (a job's cancel) is a request with an empty body
                self.close_connection = True
                self._error(411, "send a Content-Length header (chunked bodies are not accepted)")
                return None
            try:
                length = int(self.headers["Content-Length"])
            except ValueError:
                length = -1
            if not 0 <= length <= limit:
                self.close_connection = True
                self._discard(length)
                said = self.headers["Content-Length"]
                self._error(413, f"request body must be 0..{limit} bytes (this one says {said})")
                return None
            return self.rfile.read(length)

    return Handler


def _response(model_name: str, req: GenRequest) -> dict[str, Any]:
    assert req.result is not None
    n_out = sum(c.pop("_n_tokens") for c in req.result)
    for c in req.result:
        c.pop("_scores", None)
    return {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
            "model": model_name, "choices": req.result, "system_fingerprint": None,
            "usage": {"prompt_tokens": req.prompt_tokens * req.n, "completion_tokens": n_out,
                      "total_tokens": req.prompt_tokens * req.n + n_out}}


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
    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, ConnectionError | TimeoutError):  # a client that gave up: not our error
            return
        super().handle_error(request, client_address)
