"""The routes of ``sublim serve``: one function per route, found by method and path in the tables below.

GET: ``/health`` (open to all), ``/v1/models[/{id}]``, ``/v1/fine_tuning/jobs[/{id}[/events]]``. POST: uploads
and job cancels (answered as they are), then the routes faults may be injected into: chat completions, legacy
completions and job creation, each given the parsed JSON body and the fault drawn for it."""

from __future__ import annotations

import json
import queue
import time
import uuid
from collections.abc import Callable
from functools import partial
from typing import Any
from urllib.parse import parse_qs

from sublim.serve import stream
from sublim.serve.completions import completion_response, parse_completion_request
from sublim.serve.errors import RequestError
from sublim.serve.handler import Handler
from sublim.serve.parsing import parse_chat_request, streaming
from sublim.serve.paths import CHAT, COMPLETIONS, FILES, HEALTH, JOBS, MODELS
from sublim.serve.service import Service
from sublim.serve.worker import GenRequest, ModelWorker

GetRoute = Callable[[Service, str, dict[str, list[str]]], dict[str, Any]]
"""(service, path, query) → the JSON answer; RequestError for a client's mistake."""
PostRoute = Callable[[Handler, Any, str | None], None]
"""(handler, JSON body, injected fault or None): answers the request itself."""


def _models(svc: Service, path: str, query: dict[str, list[str]]) -> dict[str, Any]:
    return svc.models(path)


def _jobs(svc: Service, path: str, query: dict[str, list[str]]) -> dict[str, Any]:
    return svc.fine_tuning.route_get(path, query)


GET_ROUTES: tuple[tuple[str, GetRoute], ...] = ((MODELS, _models), (JOBS, _jobs))
"""GET routes behind the key, by the prefix of their path."""


def get(h: Handler) -> None:
    """Answer a GET: ``/health``, or the first route whose prefix the path has; 404 otherwise."""
    h.request_read()
    if h.path == HEALTH:
        h.reply_json(200, h.svc.health())
        return
    path, _, query = h.path.partition("?")
    for prefix, route in GET_ROUTES:
        if h.path.startswith(prefix):
            if h.authorized():
                h.reply_with(partial(route, h.svc, path, parse_qs(query)))
            return
    h.reply_error(404, f"no route GET {h.path}: try /v1/models or /health")


def _plain_post(h: Handler, route: str, raw: bytes) -> Callable[[], dict[str, Any]] | None:
    """The POST routes that are neither faulted nor given JSON: a file upload, a job's cancel."""
    if route == FILES:
        return partial(h.svc.fine_tuning.upload, h.headers.get("Content-Type", ""), raw)
    if route.startswith(JOBS + "/") and route.endswith("/cancel"):
        return partial(h.svc.fine_tuning.cancel, route.split("/")[4])
    return None


def post(h: Handler) -> None:
    """Answer a POST: read its body (within the limits) and the key, then its route; 404 for an unknown path."""
    raw = h.read_body()
    h.request_read()
    if raw is None or not h.authorized():
        return
    route = h.path.split("?")[0]
    if (plain := _plain_post(h, route, raw)) is not None:
        h.reply_with(plain)
        return
    answer = POST_ROUTES.get(route)
    if answer is None:
        h.reply_error(404, f"no route POST {h.path}: try {CHAT} or {COMPLETIONS}")
        return
    fault = h.svc.faults.draw(route)
    if _injected_before(h, fault):
        return
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        h.reply_error(400, f"body is not valid JSON: {exc}")
        return
    answer(h, body, fault)


def _injected_before(h: Handler, fault: str | None) -> bool:
    """Answer an injected 429 or 500 (True: answered), or sleep through a slow one."""
    if fault == "429":
        h.reply_error(429, "rate limited (injected)", kind="rate_limit_error", headers={"Retry-After": "0.2"})
        return True
    if fault == "500":
        h.reply_error(500, "server error (injected)", kind="server_error")
        return True
    if fault == "slow":
        time.sleep(h.svc.faults.slow_s)
    return False


def _injected_after(h: Handler, fault: str | None, done: str, broken: bytes | None) -> bool:
    """Answer a fault injected once the work is ``done`` (True: answered): a 500, or the ``broken`` body."""
    if fault == "500_after":
        h.reply_error(500, f"server error after {done} (injected)", kind="server_error")
        return True
    if fault == "malformed" and broken is not None:
        h.reply(200, broken)
        return True
    return False


def _submit(h: Handler, worker: ModelWorker, reqs: list[GenRequest]) -> bool:
    """Queue ``reqs``; False after answering 503 when the worker's queue is full."""
    try:
        for req in reqs:
            worker.submit(req)
    except RequestError as exc:
        h.reply_error(exc.status, exc.message, kind="server_error", headers={"Retry-After": "1"})
        return False
    return True


def _answered(h: Handler, worker: ModelWorker, reqs: list[GenRequest]) -> bool:
    """Submit ``reqs`` and wait for them; False after answering the error (busy, too slow, failed)."""
    if not _submit(h, worker, reqs):
        return False
    wait_s = h.svc.timeout_s
    deadline = time.monotonic() + wait_s
    if not all(req.done.wait(max(0.0, deadline - time.monotonic())) for req in reqs):
        h.reply_error(503, f"server busy: no answer within {wait_s:.0f} s; retry later", kind="server_error",
                      headers={"Retry-After": "5"})
        return False
    failed = next((req for req in reqs if req.result is None), None)
    if failed is not None:
        h.reply_error(500, f"generation failed: {type(failed.error).__name__}: {str(failed.error)[:200]}",
                      kind="server_error")
        return False
    return True


def chat(h: Handler, body: Any, fault: str | None) -> None:
    """``POST /v1/chat/completions``: answered whole, or streamed as it is generated, or (with logprobs)
    streamed token by token once generated."""
    try:
        worker = h.svc.worker_for(body)
        req = parse_chat_request(body, worker.tok, worker.limits)
        to_stream, usage = streaming(body)
    except RequestError as exc:
        h.reply_error(exc.status, exc.message, exc.param)
        return
    model = str(body.get("model") or h.svc.name)
    to_stream = to_stream and fault not in ("malformed", "500_after")  # those answer as if not streamed
    chunks = stream.Chunks(model, usage)
    if to_stream and not req.logprobs:  # the text goes out as it is generated
        req.stream = queue.Queue()
        if _submit(h, worker, [req]) and stream.send_live(h, chunks, req, worker, h.svc.timeout_s):
            h.svc.served["completions"] += 1
        return
    broken = b'{"id": "chatcmpl-broken", "choices": [{"index": 0, "mess'
    if not _answered(h, worker, [req]) or _injected_after(h, fault, "generating", broken):
        return
    if to_stream:
        stream.send_done(h, chunks, req, worker.tok)
    else:
        h.reply_json(200, chat_response(model, req))
    h.svc.served["completions"] += 1


def chat_response(model_name: str, req: GenRequest) -> dict[str, Any]:
    """The ``chat.completion`` object of an answered request; its prompt counts once in the usage, however
    many choices were asked for (as OpenAI counts)."""
    assert req.result is not None
    n_out = sum(c.pop("_n_tokens") for c in req.result)
    for c in req.result:
        c.pop("_scores", None)
    return {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
            "model": model_name, "choices": req.result, "system_fingerprint": None,
            "usage": {"prompt_tokens": req.prompt_tokens, "completion_tokens": n_out,
                      "total_tokens": req.prompt_tokens + n_out}}


def completions(h: Handler, body: Any, fault: str | None) -> None:
    """``POST /v1/completions``: raw-text completions of one or more prompts, with prompt log-probabilities."""
    try:
        worker = h.svc.worker_for(body)
        reqs, texts, echo = parse_completion_request(body, worker.tok, worker.limits)
    except RequestError as exc:
        h.reply_error(exc.status, exc.message, exc.param)
        return
    broken = b'{"id": "cmpl-broken", "choices": [{"text": "'
    if not _answered(h, worker, reqs) or _injected_after(h, fault, "generating", broken):
        return
    model = str(body.get("model") or h.svc.name)
    h.reply_json(200, completion_response(worker.tok, model, reqs, texts, echo))
    h.svc.served["text_completions"] += 1


def create_job(h: Handler, body: Any, fault: str | None) -> None:
    """``POST /v1/fine_tuning/jobs``: the job starts training in the background and is answered as created."""
    try:
        job = h.svc.fine_tuning.create(body if isinstance(body, dict) else {})
    except RequestError as exc:
        h.reply_error(exc.status, exc.message, exc.param)
        return
    if not _injected_after(h, fault, "the job was created", None):  # a 500 here: the job exists all the same
        h.reply_json(200, job)


POST_ROUTES: dict[str, PostRoute] = {CHAT: chat, COMPLETIONS: completions, JOBS: create_job}
"""POST routes faults may be injected into, each given the parsed JSON body."""


class Routes(Handler):
    """The handler with its routes."""

    def do_GET(self) -> None:
        get(self)

    def do_POST(self) -> None:
        post(self)
