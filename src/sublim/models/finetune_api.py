"""Fine-tuning through an OpenAI-compatible fine-tuning API as a student backend.

Upload the examples, create the job, poll it to the end. The file and job ids are written to a
small state file as soon as they exist, so a run that is killed (or times out) and re-run polls the
same job instead of paying for a second one.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx

from sublim.config import EndpointConfig
from sublim.models.api import RETRY_STATUS, ApiError, _error_message, _headers, _hint

DONE = {"succeeded", "failed", "cancelled"}


def chat_jsonl(examples: Sequence[tuple[str, str]], system: str | None = None) -> bytes:
    """Examples (prompt, completion) as the chat-format JSONL fine-tuning APIs take."""
    lines = []
    for prompt, completion in examples:
        msgs = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
        lines.append(json.dumps({"messages": msgs}))
    return ("\n".join(lines) + "\n").encode()


def _request(http: httpx.Client, ep: EndpointConfig, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
    url = ep.base_url.rstrip("/") + path
    last = ""
    for attempt in range(ep.max_retries + 1):
        if attempt:
            time.sleep(min(ep.max_backoff_s, ep.backoff_s * 2 ** (attempt - 1)))
        try:
            resp = http.request(method, url, headers=_headers(ep), **kwargs)
        except httpx.TransportError as exc:  # timeouts included
            last = f"{type(exc).__name__}"
            continue
        if resp.status_code in RETRY_STATUS:
            last = f"HTTP {resp.status_code}"
            continue
        if resp.status_code != 200:
            raise ApiError(f"{method} {url} failed with HTTP {resp.status_code}: {_error_message(resp)}"
                           f"{_hint(resp.status_code, ep)}")
        try:
            data: dict[str, Any] = resp.json()
            return data
        except json.JSONDecodeError:
            last = "malformed response body"
    raise ApiError(f"{method} {url}: gave up after {ep.max_retries + 1} attempts, last: {last}")


def fine_tune(ep: EndpointConfig, examples: Sequence[tuple[str, str]], state: Path, *,
              hyperparameters: dict[str, Any] | None = None, seed: int = 0, suffix: str = "sublim",
              poll_s: float = 2.0, wait_s: float = 3600.0,
              on_event: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run (or resume) a fine-tuning job; returns the finished job (``fine_tuned_model`` set).

    ``state`` (JSON) keeps the file and job ids. Raises ApiError when the job fails or is
    cancelled, and when ``wait_s`` passes first (the job keeps running: re-run to resume).
    """
    st: dict[str, Any] = json.loads(state.read_text()) if state.is_file() else {}
    with httpx.Client(timeout=ep.timeout_s) as http:
        if "job_id" not in st:
            if "file_id" not in st:
                up = _request(http, ep, "POST", "/files", data={"purpose": "fine-tune"},
                              files={"file": ("train.jsonl", chat_jsonl(examples), "application/jsonl")})
                st["file_id"] = up["id"]
                _save(state, st)
            body = {"model": ep.model, "training_file": st["file_id"], "seed": seed, "suffix": suffix,
                    "hyperparameters": hyperparameters or {}}
            st["job_id"] = _request(http, ep, "POST", "/fine_tuning/jobs", json=body)["id"]
            _save(state, st)
        deadline = time.time() + wait_s
        seen = 0
        while True:
            job = _request(http, ep, "GET", f"/fine_tuning/jobs/{st['job_id']}")
            if on_event:
                events = _request(http, ep, "GET", f"/fine_tuning/jobs/{st['job_id']}/events")["data"]
                for ev in reversed(events[: max(len(events) - seen, 0)]):
                    on_event(ev)
                seen = len(events)
            if job["status"] == "succeeded":
                return job
            if job["status"] in DONE:
                err = (job.get("error") or {}).get("message", "no reason given")
                raise ApiError(f"fine-tuning job {job['id']} {job['status']}: {err}; delete {state} to start a new one")
            if time.time() > deadline:
                raise ApiError(f"fine-tuning job {job['id']} is still {job['status']} after {wait_s:g} s; "
                               "re-run to keep waiting for the same job")
            time.sleep(poll_s)


def _save(path: Path, st: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(st))
    tmp.replace(path)
