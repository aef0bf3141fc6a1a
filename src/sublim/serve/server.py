"""``sublim serve``: an OpenAI-compatible HTTP server for any model of the catalog.

Endpoints: ``GET /v1/models``, ``POST /v1/chat/completions`` (temperature, top_p, max_tokens,
n, seed, stop, logprobs, top_logprobs), ``GET /health``. Concurrent requests with the same
decoding settings are batched into one ``generate`` call. Errors use the OpenAI error body.

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
from urllib.parse import parse_qs

import torch

from sublim.backends.local.generation import cut_at_stop, stop_ids
from sublim.core.errors import SublimError
from sublim.serve.errors import RequestError
from sublim.serve.finetune import FineTuning
from sublim.train.precision import autocast, float32_head

FAULT_KINDS = ("429", "500", "500_after", "slow", "malformed")
"""429 with Retry-After and 500 before any work; 500_after: the work is done, then the answer is a 500 (did it
happen? the worst case for a client); slow: an answer later than a client's timeout; malformed: a broken body."""
CHAT = "/v1/chat/completions"
JOBS = "/v1/fine_tuning/jobs"


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
    """n × (prompt + max_tokens): the token budget of one request."""
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


@dataclass
class ChatRequest:
    prompt: str
    n: int
    max_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    stop: list[str]
    logprobs: bool
    top_logprobs: int
    done: threading.Event = field(default_factory=threading.Event)
    result: list[dict[str, Any]] | None = None
    error: Exception | None = None
    prompt_tokens: int = 0

    key: tuple[Any, ...] = field(init=False)

    def __post_init__(self) -> None:
        # sampled requests with a seed run alone, so the seed alone decides their output
        solo = uuid.uuid4().hex if (self.temperature > 0 and self.seed is not None) else None
        self.key = (self.max_tokens, self.temperature, self.top_p, self.logprobs, self.top_logprobs, solo)


class ModelWorker:
    """Two lanes share the model, each a queue and a thread that batches its requests by decoding settings:
    short requests (n × max_tokens up to ``Limits.short_request_tokens``) and long ones, so that a long request
    delays a short one by sharing the cores, never by holding the model until it is done."""

    def __init__(self, model: Any, tokenizer: Any, max_batch: int = 32, wait_s: float = 0.01,
                 limits: Limits | None = None) -> None:
        self.model, self.tok = model, tokenizer
        self.max_batch, self.wait_s = max_batch, wait_s
        self.limits = (limits or Limits()).for_model(model)
        self.device = next(model.parameters()).device
        self.lanes: dict[str, queue.Queue[ChatRequest]] = {
            lane: queue.Queue(maxsize=self.limits.queue) for lane in ("short", "long")}
        self._stop_ids = stop_ids(tokenizer, model)
        tokenizer.padding_side = "left"  # set once: both lanes read it
        for lane, q in self.lanes.items():
            threading.Thread(target=self._loop, args=(q,), daemon=True, name=f"sublim-model-{lane}").start()

    def submit(self, req: ChatRequest) -> None:
        """Queue a request in its lane; RequestError 503 when that lane's queue is full."""
        lane = "short" if req.n * req.max_tokens <= self.limits.short_request_tokens else "long"
        try:
            self.lanes[lane].put_nowait(req)
        except queue.Full:
            raise RequestError(503, f"server busy: {self.limits.queue} requests are waiting; retry later") from None

    def _loop(self, q: queue.Queue[ChatRequest]) -> None:
        held: list[ChatRequest] = []
        while True:
            if not held:
                held.append(q.get())
                time.sleep(self.wait_s)  # let concurrent requests arrive
            while True:
                try:
                    held.append(q.get_nowait())
                except queue.Empty:
                    break
            group: list[ChatRequest] = []
            rest: list[ChatRequest] = []
            for r in held:
                fits = r.key == held[0].key and sum(g.n for g in group) + r.n <= self.max_batch
                (group if fits or not group else rest).append(r)
            held = rest
            try:
                self._run(group)
            except Exception as exc:  # a failed batch fails its requests, never the server
                for r in group:
                    r.error = exc
            for r in group:
                r.done.set()

    @torch.no_grad()
    def _run(self, group: list[ChatRequest]) -> None:
        first = group[0]
        prompts = [r.prompt for r in group for _ in range(r.n)]
        enc = self.tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        kwargs: dict[str, Any] = {"max_new_tokens": first.max_tokens, "eos_token_id": self._stop_ids,
                                  "pad_token_id": self.tok.pad_token_id, "return_dict_in_generate": True,
                                  "output_logits": first.logprobs, "max_time": self.limits.generation_s}
        if first.temperature > 0:
            if first.seed is not None:
                torch.manual_seed(first.seed)
            kwargs.update(do_sample=True, temperature=first.temperature, top_p=first.top_p, top_k=0)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        with autocast(self.model), float32_head(self.model):
            out = self.model.generate(**enc, **kwargs)
        width = enc["input_ids"].shape[1]
        new = out.sequences[:, width:].cpu()
        timed_out = new.shape[1] < first.max_tokens  # stopped before its length: every row ended, or time ran out
        logps = (torch.stack(out.logits, 1).float().log_softmax(-1).cpu() if first.logprobs else None)
        row = 0
        for r in group:
            r.prompt_tokens = int(enc["attention_mask"][row].sum())
            r.result = [self._choice(i, new[row + i], logps[row + i] if logps is not None else None, r, timed_out)
                        for i in range(r.n)]
            row += r.n

    def _choice(self, i: int, ids_t: torch.Tensor, logp: torch.Tensor | None, r: ChatRequest,
                timed_out: bool = False) -> dict[str, Any]:
        ids = ids_t.tolist()
        finish = "time_limit" if timed_out else "length"  # an unfinished answer: cut by the clock, or by max_tokens
        for pos, tid in enumerate(ids):
            if tid in self._stop_ids:
                ids, finish = ids[:pos], "stop"
                break
        text = self.tok.decode(ids, skip_special_tokens=True)
        text, stopped = cut_at_stop(text, False, r.stop)
        finish = "stop" if stopped else finish
        choice: dict[str, Any] = {"index": i, "message": {"role": "assistant", "content": text},
                                  "finish_reason": finish, "logprobs": None, "_n_tokens": len(ids)}
        if logp is not None:
            choice["logprobs"] = {"content": [self._token_logprob(tid, logp[pos], r.top_logprobs)
                                              for pos, tid in enumerate(ids)]}
        return choice

    def _token_logprob(self, tid: int, row: torch.Tensor, k: int) -> dict[str, Any]:
        def entry(t: int, lp: float) -> dict[str, Any]:
            s = self.tok.decode([t])
            return {"token": s, "logprob": lp, "bytes": list(s.encode("utf-8"))}

        out = entry(tid, float(row[tid]))
        if k:
            vals, idx = row.topk(k)
            out["top_logprobs"] = [entry(int(t), float(v)) for v, t in zip(vals, idx, strict=True)]
        else:
            out["top_logprobs"] = []
        return out


def parse_chat_request(body: dict[str, Any], tokenizer: Any, limits: Limits | None = None) -> ChatRequest:
    """Validate an OpenAI chat-completions body against ``limits``; raise RequestError naming the bad field."""
    lim = limits or Limits()
    if body.get("stream"):
        raise RequestError(400, "streaming is not supported by this server: send \"stream\": false", "stream")
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise RequestError(400, "'messages' must be a non-empty list of {role, content}", "messages")
    clean = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant") \
                or not isinstance(m.get("content"), str):
            raise RequestError(400, f"messages[{i}] needs role system|user|assistant and string content",
                               "messages")
        clean.append({"role": m["role"], "content": m["content"]})
    if clean[0]["role"] == "system" and not _supports_system(tokenizer):
        clean = [{"role": "user", "content": clean[0]["content"] + "\n\n" + clean[1]["content"]}] + clean[2:] \
            if len(clean) > 1 else [{"role": "user", "content": clean[0]["content"]}]
    chars = sum(len(m["content"]) for m in clean)
    if chars > 16 * lim.max_context_tokens:  # no tokenizer makes fewer tokens than this many characters allow
        raise RequestError(400, f"the messages hold {chars} characters, far more than the {lim.max_context_tokens}-"
                                "token context: shorten them", "messages")
    try:
        prompt = tokenizer.apply_chat_template(clean, tokenize=False, add_generation_prompt=True)
    except Exception as exc:
        raise RequestError(400, f"the chat template rejected these messages: {str(exc)[:200]}", "messages") from None
    prompt_tokens = len(tokenizer.encode(prompt, add_special_tokens=False))

    def num(name: str, default: float, lo: float, hi: float, kind: type = float) -> Any:
        v = body.get(name, default)
        if v is None:
            v = default
        if isinstance(v, bool) or not isinstance(v, int | float) or not lo <= v <= hi or \
                (kind is int and int(v) != v):
            raise RequestError(400, f"'{name}' must be a {kind.__name__} in [{lo}, {hi}], got {v!r}", name)
        return kind(v)

    tokens_field = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    room = lim.max_context_tokens - prompt_tokens
    if room < 1:
        raise RequestError(400, f"the prompt has {prompt_tokens} tokens: no room left in this model's "
                                f"{lim.max_context_tokens}-token context; shorten the messages", "messages")
    max_tokens = num(tokens_field, min(256, lim.max_new_tokens, room), 1, lim.max_new_tokens, int)
    if prompt_tokens + max_tokens > lim.max_context_tokens:
        raise RequestError(400, f"the prompt has {prompt_tokens} tokens and {tokens_field} is {max_tokens}: together "
                                f"more than this model's {lim.max_context_tokens}-token context; shorten the "
                                f"messages or lower {tokens_field}", "messages")
    n = num("n", 1, 1, 16, int)
    if n * (prompt_tokens + max_tokens) > lim.max_request_tokens:
        raise RequestError(400, f"n × (prompt + {tokens_field}) = {n * (prompt_tokens + max_tokens)} tokens is over "
                                f"the per-request budget of {lim.max_request_tokens}: lower n or {tokens_field}", "n")
    stop = body.get("stop") or []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
        raise RequestError(400, "'stop' must be a string or a list of non-empty strings", "stop")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2 ** 63):
        raise RequestError(400, "'seed' must be an integer from 0 to 2^63 - 1", "seed")
    logprobs = body.get("logprobs", False)
    if not isinstance(logprobs, bool):
        raise RequestError(400, "'logprobs' must be true or false", "logprobs")
    return ChatRequest(prompt=prompt, n=n, max_tokens=max_tokens,
                       temperature=num("temperature", 1.0, 0, 2), top_p=num("top_p", 1.0, 1e-6, 1),
                       seed=seed, stop=stop[:4], logprobs=logprobs,
                       top_logprobs=num("top_logprobs", 0, 0, 20, int) if logprobs else 0)


def _supports_system(tokenizer: Any) -> bool:
    tmpl = getattr(tokenizer, "chat_template", "") or ""
    return "system" in tmpl


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
            elif self.path == "/v1/models":
                if self._authorized():
                    models = [{"id": n, "object": "model", "created": c, "owned_by": "sublim"}
                              for n, c in svc.created.items()]
                    self._json(200, {"object": "list", "data": models})
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
            if route not in (CHAT, JOBS):
                self._error(404, f"no route POST {self.path}: try {CHAT}")
                return
            fault = svc.faults.draw(route)
            if fault == "429":
                self._error(429, "rate limited (injected)", kind="rate_limit_error", headers={"Retry-After": "0.2"})
                return
            if fault == "500":
                self._error(500, "server error (injected)", kind="server_error")
                return
            if fault == "slow":
                time.sleep(svc.faults.slow_s)
            try:
                body = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                self._error(400, f"body is not valid JSON: {exc}")
                return
            if route == JOBS:
                self._create_job(body, fault)
            else:
                self._chat(body, fault)

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
            except RequestError as exc:
                self._error(exc.status, exc.message, exc.param)
                return
            try:
                worker.submit(req)
            except RequestError as exc:
                self._error(exc.status, exc.message, kind="server_error", headers={"Retry-After": "1"})
                return
            if not req.done.wait(svc.timeout_s):
                self._error(503, f"server busy: no answer within {svc.timeout_s:.0f} s; retry later",
                            kind="server_error", headers={"Retry-After": "5"})
                return
            if req.result is None:
                self._error(500, f"generation failed: {type(req.error).__name__}: {str(req.error)[:200]}",
                            kind="server_error")
                return
            if fault == "malformed":
                self._send(200, b'{"id": "chatcmpl-broken", "choices": [{"index": 0, "mess')
                return
            if fault == "500_after":
                self._error(500, "server error after generating (injected)", kind="server_error")
                return
            self._json(200, _response(str(body.get("model") or svc.name), req))
            svc.served["completions"] += 1

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


def _response(model_name: str, req: ChatRequest) -> dict[str, Any]:
    assert req.result is not None
    n_out = sum(c.pop("_n_tokens") for c in req.result)
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
