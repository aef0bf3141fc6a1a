"""Server-sent events for ``"stream": true`` chat completions, framed as OpenAI does: ``data:`` events of
``chat.completion.chunk`` objects (each choice's role first, then content deltas, then its finish reason; with
``stream_options.include_usage`` a last chunk with no choices carries the usage), then ``data: [DONE]``.

Without logprobs the text goes out while it is generated: the worker hands each step's tokens over, and only
text that no later token can change is sent (a stop string could still begin in what is held back). With
logprobs the answer is generated first and sent token by token, each chunk with its token's log-probability."""

from __future__ import annotations

import json
import os
import queue
import time
import uuid
from collections.abc import Sequence
from typing import Any, BinaryIO

from sublim.backends.local.generation import cut_at_stop
from sublim.serve.worker import GenRequest, ModelWorker


class EventStream:
    """``text/event-stream`` in HTTP/1.1 chunked encoding over one connection (which then stays usable)."""

    def __init__(self, handler: Any) -> None:
        handler.send_response(200)
        for key, value in (("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache"),
                           ("Transfer-Encoding", "chunked")):
            handler.send_header(key, value)
        handler.end_headers()
        self.out: BinaryIO = handler.wfile

    def _chunk(self, data: bytes) -> None:
        self.out.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.out.flush()

    def send(self, obj: dict[str, Any]) -> None:
        self._chunk(f"data: {json.dumps(obj)}\n\n".encode())

    def close(self, done: bool = True) -> None:
        """``[DONE]`` (unless the stream ended in an error event) and the end of the body."""
        if done:
            self._chunk(b"data: [DONE]\n\n")
        self.out.write(b"0\r\n\r\n")
        self.out.flush()


class Chunks:
    """The ``chat.completion.chunk`` objects of one response (one id, one creation time)."""

    def __init__(self, model: str, usage: bool) -> None:
        self.head = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion.chunk",
                     "created": int(time.time()), "model": model, "system_fingerprint": None}
        self.with_usage = usage
        if usage:
            self.head["usage"] = None

    def delta(self, i: int, delta: dict[str, Any], finish: str | None = None,
              logprobs: dict[str, Any] | None = None) -> dict[str, Any]:
        return {**self.head, "choices": [{"index": i, "delta": delta, "logprobs": logprobs, "finish_reason": finish}]}

    def usage(self, req: GenRequest) -> dict[str, Any]:
        n_out = sum(c["_n_tokens"] for c in req.result or [])
        n_in = req.prompt_tokens  # once, however many choices (as OpenAI counts)
        return {**self.head, "choices": [],
                "usage": {"prompt_tokens": n_in, "completion_tokens": n_out, "total_tokens": n_in + n_out}}


class Incremental:
    """One choice's text as its tokens arrive: only text that no later token can change is let out."""

    def __init__(self, tokenizer: Any, stop_ids: Sequence[int], stop: list[str]) -> None:
        self.tok, self.stop_ids, self.stop = tokenizer, stop_ids, stop
        self.hold = max((len(s) for s in stop), default=1) - 1
        self.ids: list[int] = []
        self.sent, self.ended = "", False

    def add(self, tid: int) -> str:
        """The new text that token ``tid`` settles (often ""), once the answer's end is reached nothing more."""
        if self.ended:
            return ""
        if tid in self.stop_ids:
            self.ended = True
            return ""
        self.ids.append(tid)
        text, self.ended = cut_at_stop(self.tok.decode(self.ids, skip_special_tokens=True), False, self.stop)
        if not self.ended:
            # an unfinished character, the start of a stop string, or spaces a later token may clean up
            text = text.rstrip("\ufffd")
            text = text[:len(text) - self.hold].rstrip()
        return self.take(text)

    def take(self, text: str) -> str:
        """What ``text`` adds to what was sent, when it extends it (the final text at the end)."""
        if len(text) <= len(self.sent) or not text.startswith(self.sent):
            return ""
        delta, self.sent = text[len(self.sent):], text
        return delta


def token_pieces(tokenizer: Any, ids: Sequence[int], final: str) -> list[str]:
    """``final`` split at token boundaries: piece k is what token k adds; the pieces join to ``final``."""
    pieces, sent = [], 0
    for k in range(len(ids)):
        upto = len(os.path.commonprefix([tokenizer.decode(ids[:k + 1], skip_special_tokens=True), final]))
        pieces.append(final[sent:upto] if upto > sent else "")
        sent = max(sent, upto)
    if pieces:
        pieces[-1] += final[sent:]
    return pieces


def _error(out: EventStream, message: str) -> None:
    out.send({"error": {"message": message, "type": "server_error", "param": None, "code": None}})
    out.close(done=False)


def stream_live(out: EventStream, chunks: Chunks, req: GenRequest, tokenizer: Any, stop_ids: Sequence[int],
                wait_s: float) -> bool:
    """Send the text while the worker generates it (``req.stream`` set, ``req`` submitted); False after an error
    event (no answer in ``wait_s``, or the generation failed)."""
    assert req.stream is not None
    texts = [Incremental(tokenizer, stop_ids, req.stop) for _ in range(req.n)]
    while True:
        try:
            step = req.stream.get(timeout=wait_s)
        except queue.Empty:
            _error(out, f"server busy: no answer within {wait_s:.0f} s; retry later")
            return False
        if step is None:
            break
        for i, tid in enumerate(step):
            if delta := texts[i].add(tid):
                out.send(chunks.delta(i, {"content": delta}))
    if req.result is None:
        _error(out, f"generation failed: {type(req.error).__name__}: {str(req.error)[:200]}")
        return False
    for i, choice in enumerate(req.result):
        if rest := texts[i].take(choice["message"]["content"]):
            out.send(chunks.delta(i, {"content": rest}))
        out.send(chunks.delta(i, {}, choice["finish_reason"]))
    return True


def stream_done(out: EventStream, chunks: Chunks, req: GenRequest, tokenizer: Any) -> None:
    """Send a finished answer token by token, each chunk with its token's log-probability entry."""
    assert req.result is not None
    for i, choice in enumerate(req.result):
        entries = (choice["logprobs"] or {}).get("content") or []
        ids, text = [s.id for s in choice.get("_scores", [])], choice["message"]["content"]
        for k, piece in enumerate(token_pieces(tokenizer, ids, text) if ids else [text]):
            out.send(chunks.delta(i, {"content": piece}, logprobs={"content": entries[k:k + 1]} if entries else None))
        out.send(chunks.delta(i, {}, choice["finish_reason"]))


def _start(handler: Any, chunks: Chunks, n: int) -> EventStream:
    """The status line and headers, then each choice's first chunk: its role."""
    out = EventStream(handler)
    for i in range(n):
        out.send(chunks.delta(i, {"role": "assistant", "content": ""}))
    return out


def _finish(out: EventStream, chunks: Chunks, req: GenRequest) -> None:
    if chunks.with_usage:
        out.send(chunks.usage(req))
    out.close()


def send_live(handler: Any, chunks: Chunks, req: GenRequest, worker: ModelWorker, wait_s: float) -> bool:
    """Answer a submitted request (``req.stream`` set) with the text as it is generated; False when the stream
    ended in an error event."""
    out = _start(handler, chunks, req.n)
    if not stream_live(out, chunks, req, worker.tok, worker.stop_ids, wait_s):
        return False
    _finish(out, chunks, req)
    return True


def send_done(handler: Any, chunks: Chunks, req: GenRequest, tokenizer: Any) -> None:
    """Answer a finished request as a stream, token by token."""
    out = _start(handler, chunks, req.n)
    stream_done(out, chunks, req, tokenizer)
    _finish(out, chunks, req)
