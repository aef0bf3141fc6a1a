"""Fine-tuning through an OpenAI-compatible fine-tuning API: upload, create, poll, follow events.

The file and job ids are written to a small state file as soon as they exist, so a run that is
killed (or times out) and re-run polls the same job instead of paying for a second one. Creating a
job is never repeated blindly: when the create request fails in a way that leaves open whether the
job exists (a timeout, a dropped connection, a 5xx), the job list is read first and a job on the
same training file is adopted.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx

from sublim.backends.openai.retry import AmbiguousFailure, ApiError, RetryPolicy, send
from sublim.core.config import EndpointConfig
from sublim.core.files import write_json

DONE = {"succeeded", "failed", "cancelled"}


def chat_jsonl(examples: Sequence[tuple[str, str]], system: str | None = None) -> bytes:
    """Examples (prompt, completion) as the chat-format JSONL fine-tuning APIs take."""
    lines = []
    for prompt, completion in examples:
        msgs = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
        lines.append(json.dumps({"messages": msgs}))
    return ("\n".join(lines) + "\n").encode()


def _json(resp: httpx.Response) -> dict[str, Any]:
    data = resp.json()
    if not isinstance(data, dict):
        raise TypeError("not a JSON object")
    return data


def _create_job(ep: EndpointConfig, policy: RetryPolicy, body: dict[str, Any]) -> str:
    """POST /fine_tuning/jobs once; after an ambiguous failure, adopt the job the server made, if any."""
    for _ in range(policy.max_retries + 1):
        try:
            return str(send(ep, policy, "POST", "/fine_tuning/jobs", _json, idempotent=False, json=body)["id"])
        except AmbiguousFailure:
            time.sleep(policy.delay(1, None))
            existing = [j for j in list_jobs(ep, policy) if j.get("training_file") == body["training_file"]]
            if existing:
                return str(max(existing, key=lambda j: j.get("created_at", 0))["id"])
    raise ApiError(f"POST {ep.base_url}/fine_tuning/jobs kept failing and no job on {body['training_file']} "
                   "appeared: check the server, then re-run (the uploaded file is reused)")


def list_jobs(ep: EndpointConfig, policy: RetryPolicy) -> list[dict[str, Any]]:
    """Every fine-tuning job the endpoint lists, following its pages."""
    out: list[dict[str, Any]] = []
    after: str | None = None
    while True:
        page = send(ep, policy, "GET", "/fine_tuning/jobs", _json, idempotent=True,
                    params={"limit": 100, **({"after": after} if after else {})})
        out += page.get("data", [])
        if not page.get("has_more") or not page.get("data"):
            return out
        after = page["data"][-1]["id"]


def new_events(ep: EndpointConfig, policy: RetryPolicy, job_id: str, seen: set[str]) -> list[dict[str, Any]]:
    """The job's events not in ``seen``, oldest first: pages (newest first) are read until a seen event or
    the last page, so that no event is lost however many arrived since the last poll."""
    fresh: list[dict[str, Any]] = []
    after: str | None = None
    while True:
        page = send(ep, policy, "GET", f"/fine_tuning/jobs/{job_id}/events", _json, idempotent=True,
                    params={"limit": 100, **({"after": after} if after else {})})
        events = page.get("data", [])
        for ev in events:
            if ev.get("id") in seen:
                return fresh[::-1]
            fresh.append(ev)
        if not page.get("has_more") or not events:
            return fresh[::-1]
        after = events[-1]["id"]


def fine_tune(ep: EndpointConfig, examples: Sequence[tuple[str, str]], state: Path, *,
              hyperparameters: dict[str, Any] | None = None, seed: int = 0, suffix: str = "sublim",
              poll_s: float | None = None, wait_s: float | None = None,
              on_event: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run (or resume) a fine-tuning job; returns the finished job (``fine_tuned_model`` set).

    ``state`` (JSON) keeps the file and job ids. Raises ApiError when the job fails or is
    cancelled, and when ``wait_s`` passes first (the job keeps running: re-run to resume).
    """
    policy = RetryPolicy.of(ep)
    poll_s = ep.finetune_poll_s if poll_s is None else poll_s  # the endpoint's settings unless the call says
    wait_s = ep.finetune_wait_s if wait_s is None else wait_s
    st: dict[str, Any] = json.loads(state.read_text()) if state.is_file() else {}
    if "job_id" not in st:
        if "file_id" not in st:
            # a repeated upload only leaves an unused file behind, so uploads are retried like reads
            up = send(ep, policy, "POST", "/files", _json, idempotent=True, data={"purpose": "fine-tune"},
                      files={"file": ("train.jsonl", chat_jsonl(examples), "application/jsonl")})
            st["file_id"] = up["id"]
            write_json(state, st)
        body = {"model": ep.model, "training_file": st["file_id"], "seed": seed, "suffix": suffix,
                "hyperparameters": hyperparameters or {}}
        st["job_id"] = _create_job(ep, policy, body)
        write_json(state, st)
    deadline = time.time() + wait_s
    seen: set[str] = set()
    while True:
        job = send(ep, policy, "GET", f"/fine_tuning/jobs/{st['job_id']}", _json, idempotent=True)
        if on_event:
            for ev in new_events(ep, policy, st["job_id"], seen):
                seen.add(ev.get("id", ""))
                on_event(ev)
        if job["status"] == "succeeded":
            return job
        if job["status"] in DONE:
            err = (job.get("error") or {}).get("message", "no reason given")
            raise ApiError(f"fine-tuning job {job['id']} {job['status']}: {err}; delete {state} to start a new one")
        if time.time() > deadline:
            raise ApiError(f"fine-tuning job {job['id']} is still {job['status']} after {wait_s:g} s; "
                           "re-run to keep waiting for the same job")
        time.sleep(poll_s)
