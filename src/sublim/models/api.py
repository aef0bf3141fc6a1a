"""OpenAI-compatible chat completions as a backend: teachers and judges behind an HTTP endpoint.

Async with a concurrency limit; retries with exponential backoff (honouring Retry-After) on
rate limits, server errors, timeouts, dropped connections and malformed bodies; token and cost
accounting; resumable job files (one JSON line per finished request, fsynced, so a killed run
re-run skips what is done and never writes a request twice). The API key is read from the
environment variable the config names, at request time, and is never stored anywhere.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from sublim.config import EndpointConfig
from sublim.errors import SublimError

RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


class ApiError(SublimError):
    """A request that cannot succeed by retrying (bad request, auth, unknown model) or ran out of retries."""


@dataclass
class ChatReply:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    logprobs: list[dict[str, Any]] | None = None


@dataclass
class Accounting:
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    retries: Counter[str] = field(default_factory=Counter)

    def add(self, reply: ChatReply) -> None:
        self.requests += 1
        self.prompt_tokens += reply.prompt_tokens
        self.completion_tokens += reply.completion_tokens

    def as_dict(self, ep: EndpointConfig) -> dict[str, Any]:
        cost = (self.prompt_tokens * ep.price_input_per_mtok + self.completion_tokens * ep.price_output_per_mtok) / 1e6
        return {"requests": self.requests, "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens, "cost_usd": round(cost, 6),
                "retries": dict(self.retries)}


def _headers(ep: EndpointConfig) -> dict[str, str]:
    key = os.environ.get(ep.api_key_env) if ep.api_key_env else None
    return {"Authorization": f"Bearer {key}"} if key else {}


def _error_message(resp: httpx.Response) -> str:
    try:
        err = resp.json().get("error", {})
        return str(err.get("message", err)) if isinstance(err, dict) else str(err)
    except (json.JSONDecodeError, AttributeError):
        return resp.text[:200]


def _parse_reply(data: Any) -> ChatReply:
    """The first choice of a chat.completion body; KeyError/TypeError when it is not one."""
    choice = data["choices"][0]
    text = choice["message"]["content"]
    if not isinstance(text, str):
        raise TypeError("content is not a string")
    usage = data.get("usage") or {}
    lp = choice.get("logprobs")
    return ChatReply(text, str(choice.get("finish_reason") or ""), int(usage.get("prompt_tokens", 0)),
                     int(usage.get("completion_tokens", 0)), lp.get("content") if isinstance(lp, dict) else None)


class ChatClient:
    """One endpoint; ``await chat(messages, **params)`` with retries. Use inside ``async with``."""

    def __init__(self, ep: EndpointConfig, accounting: Accounting | None = None) -> None:
        self.ep = ep
        self.acct = accounting or Accounting()
        self.url = ep.base_url.rstrip("/") + "/chat/completions"
        self._sem = asyncio.Semaphore(ep.concurrency)
        self._http = httpx.AsyncClient(timeout=httpx.Timeout(ep.timeout_s),
                                       limits=httpx.Limits(max_connections=ep.concurrency))

    async def __aenter__(self) -> ChatClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._http.aclose()

    async def chat(self, messages: Sequence[dict[str, str]], **params: Any) -> ChatReply:
        body = {"model": self.ep.model, "messages": list(messages), **params}
        last = ""
        retry_after: float | None = None
        async with self._sem:
            for attempt in range(self.ep.max_retries + 1):
                if attempt:
                    await asyncio.sleep(self._backoff(attempt, retry_after))
                try:
                    resp = await self._http.post(self.url, json=body, headers=_headers(self.ep))
                except httpx.TimeoutException:
                    last = f"timeout after {self.ep.timeout_s:g} s"
                    self.acct.retries["timeout"] += 1
                    continue
                except httpx.TransportError as exc:
                    last = f"connection error ({type(exc).__name__})"
                    self.acct.retries["connection"] += 1
                    continue
                if resp.status_code in RETRY_STATUS:
                    last = f"HTTP {resp.status_code}: {_error_message(resp)}"
                    retry_after = _retry_after(resp) if resp.status_code == 429 else None
                    self.acct.retries[str(resp.status_code)] += 1
                    continue
                if resp.status_code != 200:
                    raise ApiError(f"{self.url} refused the request with HTTP {resp.status_code}: "
                                   f"{_error_message(resp)}{_hint(resp.status_code, self.ep)}")
                try:
                    reply = _parse_reply(resp.json())
                except (json.JSONDecodeError, KeyError, IndexError, TypeError, ValueError):
                    last = "malformed response body"
                    self.acct.retries["malformed"] += 1
                    continue
                self.acct.add(reply)
                return reply
        raise ApiError(f"{self.url}: gave up after {self.ep.max_retries + 1} attempts, last: {last}; "
                       "check the server, or raise max_retries / timeout_s, then re-run to resume")

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        wait = min(self.ep.max_backoff_s, self.ep.backoff_s * 2 ** (attempt - 1))
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.ep.max_backoff_s))
        return wait * (0.5 + random.random() / 2)  # jitter spreads retries of concurrent requests


def _retry_after(resp: httpx.Response) -> float | None:
    try:
        return float(resp.headers.get("Retry-After", ""))
    except ValueError:
        return None


def _hint(status: int, ep: EndpointConfig) -> str:
    if status == 401:
        return f" (set the key in ${ep.api_key_env})" if ep.api_key_env else " (set api_key_env)"
    if status == 404:
        return f" (check base_url {ep.base_url!r} and model {ep.model!r})"
    return ""


@dataclass(frozen=True)
class ChatJob:
    index: int
    messages: list[dict[str, str]]
    extra: dict[str, Any] = field(default_factory=dict)
    """Copied into the output row (e.g. the prompt text)."""


def run_chat_jobs(ep: EndpointConfig, jobs: Sequence[ChatJob], out: Path, params: dict[str, Any],
                  progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Answer every job into ``out`` (JSONL, one row per index), resuming what is there.

    Returns the accounting of this call (requests, tokens, cost, retries, wall time).
    """
    from sublim.pipeline.store import read_jsonl, write_jsonl

    done = {r["index"]: r for r in read_jsonl(out)} if out.is_file() else {}
    write_jsonl(out, list(done.values()))  # drop a torn last line before appending
    todo = [j for j in jobs if j.index not in done]
    if progress and done:
        progress(len(done))
    acct = Accounting()
    t0 = time.time()
    if todo:
        asyncio.run(_run_jobs(ep, todo, out, params, acct, progress))
    return {**acct.as_dict(ep), "wall_time_s": round(time.time() - t0, 1), "resumed_from": len(done)}


async def _run_jobs(ep: EndpointConfig, todo: Sequence[ChatJob], out: Path, params: dict[str, Any],
                    acct: Accounting, progress: Callable[[int], None] | None) -> None:
    async with ChatClient(ep, acct) as client:
        with out.open("a", encoding="utf-8") as fh:

            async def one(job: ChatJob) -> None:
                reply = await client.chat(job.messages, **params)
                row = {"index": job.index, **job.extra, "completion": reply.text,
                       "finish_reason": reply.finish_reason, "n_tokens": reply.completion_tokens,
                       "finished": reply.finish_reason == "stop"}
                if reply.logprobs is not None:
                    row["logprobs"] = reply.logprobs
                fh.write(json.dumps(row) + "\n")  # one event loop thread: writes never interleave
                fh.flush()
                os.fsync(fh.fileno())
                if progress:
                    progress(1)

            tasks = [asyncio.create_task(one(j)) for j in todo]
            try:
                await asyncio.gather(*tasks)
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
