"""Fine-tuning endpoints of ``sublim serve`` in the OpenAI shape: upload a JSONL of chat examples
(``POST /v1/files``), create a job (``POST /v1/fine_tuning/jobs``), poll it, list its events, cancel
it. Jobs train a copy of the served model with the package's own SFT code in a background thread;
the result is then served under its ``ft:`` name beside the base model."""

from __future__ import annotations

import copy
import email.parser
import email.policy
import json
import threading
import time
import uuid
from typing import Any

from sublim.serve.errors import RequestError
from sublim.train import Example, TrainSettings, encode_example, train_student

MAX_FILE = 64 << 20


def parse_upload(content_type: str, body: bytes) -> tuple[str, str, bytes]:
    """(purpose, filename, bytes) from a multipart/form-data upload."""
    if not content_type.startswith("multipart/form-data"):
        raise RequestError(400, "upload a file as multipart/form-data with fields 'purpose' and 'file'")
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body)
    fields: dict[str, tuple[str, bytes]] = {}
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        fields[str(name)] = (str(part.get_filename() or ""), payload if isinstance(payload, bytes) else b"")
    if "file" not in fields:
        raise RequestError(400, "multipart upload has no 'file' field", "file")
    purpose = fields.get("purpose", ("", b"fine-tune"))[1].decode("utf-8", "replace")
    return purpose, fields["file"][0] or "upload.jsonl", fields["file"][1]


def parse_training_file(data: bytes) -> list[tuple[str | None, str, str]]:
    """(system, user, assistant) per line of a chat-format JSONL; RequestError naming a bad line."""
    examples = []
    for n, raw in enumerate(data.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            msgs = json.loads(raw.decode("utf-8"))["messages"]
            roles = [m["role"] for m in msgs]
            texts = [m["content"] for m in msgs]
            if roles[-1] != "assistant" or "user" not in roles or not all(isinstance(t, str) for t in texts):
                raise ValueError
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError, IndexError):
            raise RequestError(400, f"training file line {n}: expected {{\"messages\": [...]}} ending with an "
                                    "assistant message, with a user message before it (UTF-8 JSON)", "file") from None
        system = texts[0] if roles[0] == "system" else None
        user = texts[len(roles) - 1 - roles[::-1].index("user")]
        examples.append((system, user, texts[-1]))
    if not examples:
        raise RequestError(400, "training file holds no examples", "file")
    return examples


def hyperparameters(body: dict[str, Any]) -> dict[str, Any]:
    """A job's hyperparameters: ``method.supervised.hyperparameters`` (the current API) or the deprecated top-level
    ``hyperparameters``; other methods (``dpo``, ``reinforcement``) are refused."""
    hp = body.get("hyperparameters") or {}
    if not isinstance(hp, dict):
        raise RequestError(400, "'hyperparameters' must be an object", "hyperparameters")
    method = body.get("method")
    if method is None:
        return hp
    kind = method.get("type") if isinstance(method, dict) else None
    if kind != "supervised":
        raise RequestError(400, f"fine-tuning method {kind!r} is not supported: this server trains with "
                                "{\"type\": \"supervised\"} only", "method")
    supervised = method.get("supervised") or {}
    given = (supervised.get("hyperparameters") or {}) if isinstance(supervised, dict) else None
    if not isinstance(given, dict):
        raise RequestError(400, "'method.supervised.hyperparameters' must be an object", "method")
    if hp and given and hp != given:
        raise RequestError(400, "hyperparameters are given twice, differently: send them only in "
                                "method.supervised.hyperparameters", "hyperparameters")
    return given or hp


class FineTuning:
    """Files and jobs of one server; a finished job's model is handed to ``register(name, model)``."""

    def __init__(self, base_model: Any, tokenizer: Any, base_name: str, register: Any) -> None:
        self.base, self.tok, self.base_name, self.register = base_model, tokenizer, base_name, register
        self.files: dict[str, dict[str, Any]] = {}
        self.jobs: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def upload(self, content_type: str, body: bytes) -> dict[str, Any]:
        purpose, filename, data = parse_upload(content_type, body)
        if purpose != "fine-tune":
            raise RequestError(400, f"purpose {purpose!r} is not supported: use 'fine-tune'", "purpose")
        if len(data) > MAX_FILE:
            raise RequestError(413, f"file is larger than {MAX_FILE} bytes", "file")
        examples = parse_training_file(data)
        fid = f"file-{uuid.uuid4().hex[:24]}"
        meta = {"id": fid, "object": "file", "bytes": len(data), "created_at": int(time.time()),
                "filename": filename, "purpose": purpose}
        self.files[fid] = {**meta, "_examples": examples}
        return meta

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        fid = body.get("training_file")
        if not isinstance(fid, str) or fid not in self.files:
            raise RequestError(400, f"training_file {fid!r} not found: upload it with POST /v1/files first",
                               "training_file")
        if body.get("model") not in (None, self.base_name):
            raise RequestError(400, f"model {body.get('model')!r} cannot be fine-tuned here: use {self.base_name!r}",
                               "model")
        hp = hyperparameters(body)
        try:
            epochs = int(hp.get("n_epochs", 3) if hp.get("n_epochs") != "auto" else 3)
            batch = int(hp.get("batch_size", 8) if hp.get("batch_size") != "auto" else 8)
            lr_mult = float(hp.get("learning_rate_multiplier", 1.0) if hp.get("learning_rate_multiplier") != "auto"
                            else 1.0)
            seed = int(body.get("seed") or 0)
            if not 0 <= seed < 2 ** 63:
                raise ValueError
            if not (1 <= epochs <= 50 and 1 <= batch <= 256 and 0 < lr_mult <= 100):
                raise ValueError
        except (TypeError, ValueError, OverflowError):
            raise RequestError(400, "hyperparameters need n_epochs 1..50, batch_size 1..256, "
                                    "learning_rate_multiplier in (0, 100]", "hyperparameters") from None
        jid = f"ftjob-{uuid.uuid4().hex[:24]}"
        suffix = str(body.get("suffix") or "sublim")[:40]
        job: dict[str, Any] = {
            "id": jid, "object": "fine_tuning.job", "model": self.base_name, "created_at": int(time.time()),
            "finished_at": None, "fine_tuned_model": None, "status": "queued", "training_file": fid,
            "hyperparameters": {"n_epochs": epochs, "batch_size": batch, "learning_rate_multiplier": lr_mult},
            "method": {"type": "supervised", "supervised": {"hyperparameters": {
                "n_epochs": epochs, "batch_size": batch, "learning_rate_multiplier": lr_mult}}},
            "seed": seed, "trained_tokens": None, "error": None, "_events": [], "_cancel": False,
            "_name": f"ft:{self.base_name}:{suffix}:{jid[6:14]}",
        }
        with self._lock:
            self.jobs[jid] = job
        threading.Thread(target=self._train, args=(job,), daemon=True, name=jid).start()
        return public(job)

    def _event(self, job: dict[str, Any], message: str, **data: Any) -> None:
        job["_events"].append({"object": "fine_tuning.job.event", "id": f"ftevent-{len(job['_events'])}",
                               "created_at": int(time.time()), "level": "info", "message": message, "data": data})

    def _train(self, job: dict[str, Any]) -> None:
        class Cancelled(Exception):
            pass

        try:
            job["status"] = "running"
            examples = [Example(u, a, s) for s, u, a in self.files[job["training_file"]]["_examples"]]
            hp = job["hyperparameters"]
            settings = TrainSettings("sft", hp["n_epochs"], 5e-5 * hp["learning_rate_multiplier"], hp["batch_size"],
                                     warmup_steps=2, seed=job["seed"])

            def on_step(step: int, total: int, loss: float) -> None:
                if job["_cancel"]:
                    raise Cancelled
                self._event(job, f"Step {step}/{total}: training loss={loss:.4f}", step=step, total_steps=total,
                            train_loss=loss)

            model, _ = train_student(copy.deepcopy(self.base), self.tok, examples, settings, None, on_step)
            model.eval()
            job["trained_tokens"] = sum(len(encode_example(self.tok, e)[0]) for e in examples) * hp["n_epochs"]
            self.register(job["_name"], model)
            job["fine_tuned_model"] = job["_name"]
            job["status"] = "succeeded"
            self._event(job, "The job has successfully completed")
        except Cancelled:
            job["status"] = "cancelled"
        except Exception as exc:  # a failed job reports why; the server keeps serving
            job["status"] = "failed"
            job["error"] = {"code": "training_error", "message": str(exc)[:500], "param": None}
        job["finished_at"] = int(time.time())

    def get(self, jid: str) -> dict[str, Any]:
        if jid not in self.jobs:
            raise RequestError(404, f"fine-tuning job {jid!r} not found (jobs live as long as the server)")
        return self.jobs[jid]

    def route_get(self, path: str, query: dict[str, list[str]] | None = None) -> dict[str, Any]:
        """GET jobs (newest first), one job, or a job's events (newest first); lists are pages of ``limit``
        (default 20, at most 100) after the id ``after``, as in the OpenAI API."""
        parts = path.strip("/").split("/")  # v1 fine_tuning jobs [id [events]]
        if len(parts) == 3:
            return page([public(j) for j in reversed(list(self.jobs.values()))], query or {})
        job = self.get(parts[3])
        if len(parts) == 5 and parts[4] == "events":
            return page(list(reversed(job["_events"])), query or {})
        if len(parts) != 4:
            raise RequestError(404, f"no route GET {path}")
        return public(job)

    def cancel(self, jid: str) -> dict[str, Any]:
        job = self.get(jid)
        if job["status"] in ("queued", "running"):
            job["_cancel"] = True
        return public(job)


def page(items: list[dict[str, Any]], query: dict[str, list[str]]) -> dict[str, Any]:
    """One page of a newest-first list: ``limit`` items after the item whose id is ``after``."""
    try:
        limit = int((query.get("limit") or ["20"])[0])
    except ValueError:
        raise RequestError(400, "'limit' must be an integer from 1 to 100", "limit") from None
    if not 1 <= limit <= 100:
        raise RequestError(400, "'limit' must be an integer from 1 to 100", "limit")
    after = next(iter(query.get("after") or []), None)
    start = 0
    if after is not None:
        ids = [it.get("id") for it in items]
        if after not in ids:
            raise RequestError(400, f"'after' {after!r} is not an id in this list", "after")
        start = ids.index(after) + 1
    chunk = items[start:start + limit]
    return {"object": "list", "data": chunk, "has_more": start + limit < len(items)}


def public(job: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in job.items() if not k.startswith("_")}
