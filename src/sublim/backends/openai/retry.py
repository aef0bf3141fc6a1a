"""The one retry policy of every HTTP client in sublim (chat completions, files, fine-tuning jobs).

Exponential backoff with jitter, honouring ``Retry-After``. A request is repeated only when that
is safe: always when it never reached the server (connection refused) or the server says it did
no work (429, 408, 425); after a timeout, a dropped connection, a 5xx or a malformed body only
when the request is idempotent. For a request that is not (creating a fine-tuning job), such an
ambiguous failure raises :class:`AmbiguousFailure`, so the caller can look before it asks again.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx

from sublim.core.config import EndpointConfig
from sublim.core.errors import SublimError

T = TypeVar("T")
RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
NO_WORK_DONE = {408, 425, 429}
"""Statuses that say the request was not acted on: safe to repeat any request."""


class ApiError(SublimError):
    """A request that cannot succeed by retrying (bad request, auth, unknown model) or ran out of retries."""


class AmbiguousFailure(ApiError):
    """A request that is not safe to repeat failed in a way that leaves open whether it took effect."""


class Malformed(Exception):
    """Raised by a response parser: the body is not what the endpoint promises."""


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a request is repeated."""

    max_retries: int = 8
    backoff_s: float = 0.5
    max_backoff_s: float = 30.0

    @classmethod
    def of(cls, ep: EndpointConfig) -> RetryPolicy:
        return cls(ep.max_retries, ep.backoff_s, ep.max_backoff_s)

    def delay(self, attempt: int, retry_after: float | None) -> float:
        wait = min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1))
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.max_backoff_s))
        return wait * (0.5 + random.random() / 2)  # jitter spreads retries of concurrent requests


def retry_after(resp: httpx.Response) -> float | None:
    try:
        return float(resp.headers.get("Retry-After", ""))
    except ValueError:
        return None


def error_message(resp: httpx.Response) -> str:
    try:
        err = resp.json().get("error", {})
        return str(err.get("message", err)) if isinstance(err, dict) else str(err)
    except (json.JSONDecodeError, AttributeError, UnicodeDecodeError):
        return resp.text[:200]


def hint(status: int, ep: EndpointConfig) -> str:
    if status == 401:
        return f" (set the key in ${ep.api_key_env})" if ep.api_key_env else " (set api_key_env)"
    if status == 404:
        return f" (check base_url {ep.base_url!r} and model {ep.model!r})"
    return ""


@dataclass
class _Outcome:
    retry: bool
    reason: str
    ambiguous: bool = False
    wait_hint: float | None = None


def _judge_exception(exc: Exception, idempotent: bool, timeout_s: float) -> _Outcome:
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        return _Outcome(True, "connection")  # never reached the server
    reason = f"timeout after {timeout_s:g} s" if isinstance(exc, httpx.TimeoutException) else \
        f"connection error ({type(exc).__name__})"
    return _Outcome(idempotent, reason, ambiguous=not idempotent)


def _judge_status(resp: httpx.Response, idempotent: bool) -> _Outcome | None:
    if resp.status_code not in RETRY_STATUS:
        return None
    safe = idempotent or resp.status_code in NO_WORK_DONE
    wait = retry_after(resp) if resp.status_code in (429, 503) else None
    return _Outcome(safe, f"HTTP {resp.status_code}: {error_message(resp)}", ambiguous=not safe, wait_hint=wait)


def _counter_key(reason: str) -> str:
    if reason.startswith("HTTP "):
        return reason[5:8]
    for word in ("timeout", "connection", "malformed"):
        if reason.startswith(word):
            return word
    return reason


def _fail(method: str, url: str, resp: httpx.Response, ep: EndpointConfig) -> ApiError:
    return ApiError(f"{method} {url} failed with HTTP {resp.status_code}: {error_message(resp)}"
                    f"{hint(resp.status_code, ep)}")


def _gave_up(method: str, url: str, attempts: int, last: str) -> ApiError:
    return ApiError(f"{method} {url}: gave up after {attempts} attempts, last: {last}; check the server, or raise "
                    "max_retries / timeout_s, then re-run to resume")


def _ambiguous(method: str, url: str, last: str) -> AmbiguousFailure:
    return AmbiguousFailure(f"{method} {url} failed ({last}) after the server may have acted on it; it is not "
                            "repeated blindly")


async def send_async(http: httpx.AsyncClient, ep: EndpointConfig, policy: RetryPolicy, method: str, url: str,
                     parse: Callable[[httpx.Response], T], *, idempotent: bool, counts: Counter[str] | None = None,
                     **kwargs: Any) -> T:
    """One request with retries; ``parse`` turns a 200 response into the result; ``counts`` tallies why
    requests were repeated (by reason)."""
    last, wait_hint = "", None
    started = time.monotonic()
    for attempt in range(policy.max_retries + 1):
        if attempt:
            wait = policy.delay(attempt, wait_hint)
            if time.monotonic() - started + wait > ep.deadline_s:
                raise _gave_up(method, url, attempt, f"{last}; the next retry would pass deadline_s "
                                                     f"{ep.deadline_s:g} s")
            await asyncio.sleep(wait)
        try:
            resp = await http.request(method, url, headers=headers(ep), **kwargs)
        except httpx.TransportError as exc:
            out = _judge_exception(exc, idempotent, ep.timeout_s)
        else:
            out_or_none = _judge_status(resp, idempotent)
            if out_or_none is None:
                if resp.status_code != 200:
                    raise _fail(method, url, resp, ep)
                try:
                    return parse(resp)
                except (Malformed, json.JSONDecodeError, KeyError, IndexError, TypeError, ValueError):
                    out = _Outcome(idempotent, "malformed response body", ambiguous=not idempotent)
            else:
                out = out_or_none
        last, wait_hint = out.reason, out.wait_hint
        if counts is not None:
            counts[_counter_key(out.reason)] += 1
        if out.ambiguous:
            raise _ambiguous(method, url, last)
    raise _gave_up(method, url, policy.max_retries + 1, last)


def send(ep: EndpointConfig, policy: RetryPolicy, method: str, path: str, parse: Callable[[httpx.Response], T], *,
         idempotent: bool, **kwargs: Any) -> T:
    """:func:`send_async` for synchronous callers (a fresh client per call: fine-tuning polls, uploads)."""

    async def one() -> T:
        async with httpx.AsyncClient(timeout=ep.timeout_s) as http:
            return await send_async(http, ep, policy, method, ep.base_url.rstrip("/") + path, parse,
                                    idempotent=idempotent, **kwargs)

    return run_to_end(one())


def run_to_end(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to its end from synchronous code. Where this thread already runs an event loop (a Jupyter
    cell, an async application), ``asyncio.run`` would refuse: the coroutine then runs on a loop of its own in
    a helper thread while this thread waits, and its result or exception comes back here."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as exc:  # handed to the waiting thread, which raises it
            box["error"] = exc

    helper = threading.Thread(target=work, name="sublim-client")
    helper.start()
    helper.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def headers(ep: EndpointConfig) -> dict[str, str]:
    """The Authorization header, with the key read from the environment now (it is never stored)."""
    key = os.environ.get(ep.api_key_env) if ep.api_key_env else None
    return {"Authorization": f"Bearer {key}"} if key else {}
