"""What the routes of ``sublim serve`` serve: the models (the base one and those fine-tuned here), each behind its
worker, fine-tuning jobs, the fault plan, the key, and counts of what was answered."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any
from urllib.parse import unquote

from sublim.serve.errors import RequestError
from sublim.serve.faults import FaultPlan
from sublim.serve.finetune import FineTuning
from sublim.serve.limits import Limits
from sublim.serve.paths import MODELS
from sublim.serve.worker import ModelWorker


class Service:
    """The served models (base and fine-tuned), fine-tuning, faults, a key: what every request handler shares."""

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
        """Serve ``model`` under ``name`` beside the others (a finished fine-tuning job's model)."""
        self.workers[name] = ModelWorker(model, self.tok, self.max_batch, limits=self.limits)
        self.created[name] = int(time.time())

    def worker_for(self, body: Any) -> ModelWorker:
        """The worker of the model a request body names (the base model when it names none)."""
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

    def health(self) -> dict[str, Any]:
        """``GET /health``: the model, the faults injected so far and the answers given."""
        return {"status": "ok", "model": self.name, "faults": dict(self.faults.counts), "served": dict(self.served)}
