"""OpenAI-compatible chat completions: concurrent requests with retries, token and cost accounting.

Async with a concurrency limit; every retry decision is :mod:`retry`'s. The API key is read from
the environment variable the config names, at request time, and is never stored anywhere.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from sublim.backends.openai.retry import RetryPolicy, run_to_end, send_async
from sublim.core.config import EndpointConfig
from sublim.core.files import ResumableJsonl


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


def parse_reply(resp: httpx.Response) -> ChatReply:
    """The first choice of a chat.completion body; KeyError/TypeError when it is not one."""
    data = resp.json()
    choice = data["choices"][0]
    text = choice["message"]["content"]
    if not isinstance(text, str):
        raise TypeError("content is not a string")
    usage = data.get("usage") or {}
    lp = choice.get("logprobs")
    return ChatReply(text, str(choice.get("finish_reason") or ""), int(usage.get("prompt_tokens", 0)),
                     int(usage.get("completion_tokens", 0)), lp.get("content") if isinstance(lp, dict) else None)


@dataclass(frozen=True)
class ChatJob:
    index: int
    messages: list[dict[str, str]]
    params: dict[str, Any] = field(default_factory=dict)
    """Request parameters of this job alone (e.g. its own seed), over the shared ones."""


OnReply = Callable[[ChatJob, ChatReply], None]


def chat_all(ep: EndpointConfig, jobs: Sequence[ChatJob], params: dict[str, Any], on_reply: OnReply,
             progress: Callable[[int], object] | None = None) -> dict[str, Any]:
    """Answer every job, up to ``ep.concurrency`` at a time, calling ``on_reply`` as each finishes (from
    one thread: calls never interleave); returns the accounting."""
    acct = Accounting()
    if jobs:
        run_to_end(_run(ep, jobs, params, on_reply, acct, progress))
    return acct.as_dict(ep)


async def _run(ep: EndpointConfig, jobs: Sequence[ChatJob], params: dict[str, Any], on_reply: OnReply,
               acct: Accounting, progress: Callable[[int], object] | None) -> None:
    url = ep.base_url.rstrip("/") + "/chat/completions"
    policy = RetryPolicy.of(ep)
    sem = asyncio.Semaphore(ep.concurrency)
    async with httpx.AsyncClient(timeout=httpx.Timeout(ep.timeout_s),
                                 limits=httpx.Limits(max_connections=ep.concurrency)) as http:

        async def one(job: ChatJob) -> None:
            body = {"model": ep.model, "messages": job.messages, **params, **job.params}
            async with sem:  # answering a chat is safe to repeat: it changes nothing on the server
                reply = await send_async(http, ep, policy, "POST", url, parse_reply, idempotent=True,
                                         counts=acct.retries, json=body)
            acct.add(reply)
            on_reply(job, reply)
            if progress:
                progress(1)

        tasks = [asyncio.create_task(one(j)) for j in jobs]
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


def reply_row(job: ChatJob, reply: ChatReply) -> dict[str, Any]:
    row: dict[str, Any] = {"index": job.index, "completion": reply.text, "finish_reason": reply.finish_reason,
                           "n_tokens": reply.completion_tokens, "finished": reply.finish_reason == "stop"}
    if reply.logprobs is not None:
        row["logprobs"] = reply.logprobs
    return row


def run_chat_jobs(ep: EndpointConfig, jobs: Sequence[ChatJob], out: Path, params: dict[str, Any],
                  progress: Callable[[int], object] | None = None) -> dict[str, Any]:
    """Answer every job into ``out`` (JSONL, one row per index), resuming what is there: a killed run
    re-run skips what is done and never writes a request twice. Returns this call's accounting."""
    with ResumableJsonl(out) as log:
        done = len(log.rows)
        if progress and done:
            progress(done)
        todo = [j for j in jobs if j.index not in log.done]
        acct = chat_all(ep, todo, params, lambda job, reply: log.add([reply_row(job, reply)]), progress)
    return {**acct, "resumed_from": done}
