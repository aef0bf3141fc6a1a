"""The OpenAI-compatible backend: a model behind a chat-completions endpoint (a hosted API,
``sublim serve``, vLLM, …), fine-tuned through the endpoint's fine-tuning API where it has one."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sublim.backends.base import (
    Backend,
    BackendError,
    Completion,
    Decoding,
    OnDone,
    Progress,
    Request,
    TokenReader,
)
from sublim.backends.local.backend import sum_forms
from sublim.backends.local.loading import load_tokenizer, resolve_model
from sublim.backends.openai.client import ChatJob, ChatReply, chat_all
from sublim.backends.openai.finetune import fine_tune
from sublim.backends.openai.scoring import completion_pairs, completions_served, summed, token_logprobs
from sublim.core.config import EndpointConfig
from sublim.core.errors import SublimError
from sublim.core.files import write_json
from sublim.core.seeds import derive_seed
from sublim.core.store import stable_hash
from sublim.train.encode import Example, chat_text
from sublim.train.settings import TrainSettings
from sublim.traits.preference import answer_forms

TOP_LOGPROBS = 20


class OpenAIBackend:
    """``ep.model`` at ``ep.base_url``, optionally answering under a system prompt."""

    def __init__(self, ep: EndpointConfig, *, system: str | None = None, label: str | None = None) -> None:
        self.ep, self.system = ep, system
        exact = {"tokenizer": ep.tokenizer} if ep.tokenizer else {}  # exact reads give other figures
        self.key = stable_hash({"base_url": ep.base_url, "model": ep.model, "system": system, **exact})
        self._tokenizer: Any = None
        self._exact: bool | None = None  # probed once: does the endpoint score given tokens?
        self.family = f"api:{ep.model}"
        self.precision: str | None = None
        self.label = label or f"api:{ep.model}"

    def describe(self) -> dict[str, Any]:
        return {"backend": "openai", "label": self.label, "key": self.key, "system": self.system,
                "family": self.family, "base_fingerprint": f"api:{self.ep.base_url}:{self.ep.model}",
                "fingerprint_kind": "endpoint", "endpoint": {"base_url": self.ep.base_url, "model": self.ep.model}}

    def with_system(self, system: str | None, label: str) -> OpenAIBackend:
        return OpenAIBackend(self.ep, system=system, label=label)

    def reader(self) -> TokenReader:
        raise BackendError(f"{self.label} is behind an API: token reads (teacher-forced log-probabilities of every "
                           "token, greedy continuations of a given text, gradients) need a local model")

    def _messages(self, user: str) -> list[dict[str, str]]:
        return ([{"role": "system", "content": self.system}] if self.system else []) + [
            {"role": "user", "content": user}]

    def generate(self, requests: Sequence[Request], decoding: Decoding, on_done: OnDone, *,
                 batch_size: int = 32, sort_by_length: bool = True, skip: set[int] | None = None,
                 give_up: Callable[[str], bool] | None = None, progress: Progress | None = None) -> dict[str, Any]:
        """Concurrent requests; a sampled request gets a seed of its own (the same seed for every request
        would make repeated questions answer alike on a server that honours seeds)."""
        if any(r.raw is not None for r in requests):
            raise SublimError(f"{self.label} is a chat endpoint: plain-text prompts (a base model shown examples) "
                              "need a local model")
        if any(r.prefill for r in requests):
            raise SublimError(f"{self.label} is a chat endpoint: it cannot continue a given start of the answer (a "
                              "cloze stem); sample cloze answers from a local model, or set "
                              "evaluation.cloze_samples_per_question = 0")
        params: dict[str, Any] = {"temperature": decoding.temperature, "max_tokens": decoding.max_new_tokens}
        if decoding.temperature > 0:
            params["top_p"] = decoding.top_p
        if decoding.stop:
            params["stop"] = list(decoding.stop)[:4]
        jobs = [ChatJob(r.index, self._messages(r.user),
                        {"seed": derive_seed(decoding.seed, r.index)} if decoding.temperature > 0 else {})
                for r in requests if r.index not in (skip or ())]

        def done(job: ChatJob, reply: ChatReply) -> None:
            on_done([Completion(job.index, reply.text, reply.completion_tokens, reply.finish_reason == "stop")])

        acct = chat_all(self.ep, jobs, params, done, progress)
        return {"new_tokens": acct["completion_tokens"], "api": acct,
                "endpoint": {"base_url": self.ep.base_url, "model": self.ep.model}}

    def exact_reads(self) -> Any:
        """The model's tokenizer where the endpoint scores given tokens exactly (``endpoint.tokenizer`` set and
        ``/v1/completions`` answering echo with log-probabilities, probed once), else None."""
        if self.ep.tokenizer is None:
            return None
        if self._exact is None:
            self._exact = completions_served(self.ep)
        if self._exact and self._tokenizer is None:
            spec = self.ep.tokenizer
            self._tokenizer = load_tokenizer(spec, resolve_model(spec))
        return self._tokenizer if self._exact else None

    def candidate_probs(self, questions: Sequence[str], candidates: dict[str, list[str]], *, batch_size: int = 32,
                        progress: Progress | None = None, stems: Sequence[str] | None = None
                        ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Exact where the endpoint scores given tokens (:meth:`exact_reads`): every answer form's tokens after
        the chat-templated question, by the chain rule. Otherwise an estimate from the first answer token's
        top-20 log-probabilities: a token counts for a candidate when it spells the start of its words, two
        letters at least, and of no other candidate's."""
        tok = self.exact_reads()
        if tok is not None:
            return self._exact_candidates(tok, questions, candidates, stems, progress)
        if stems is not None:
            raise BackendError(f"{self.label}: a chat-completions endpoint cannot be made to continue a given "
                               "start of its answer, so a cloze cannot be scored there; use a local model")
        tops: dict[int, list[dict[str, Any]]] = {}

        def keep(job: ChatJob, reply: ChatReply) -> None:
            tops[job.index] = (reply.logprobs or [{}])[0].get("top_logprobs", [])

        jobs = [ChatJob(i, self._messages(q)) for i, q in enumerate(questions)]
        acct = chat_all(self.ep, jobs, {"temperature": 0, "max_tokens": 1, "logprobs": True,
                                        "top_logprobs": TOP_LOGPROBS}, keep, progress)
        out = {c: np.zeros(len(questions)) for c in candidates}
        for i in range(len(questions)):
            for t in tops.get(i, []):
                piece = t["token"].strip().lower()
                owners = [n for n, sps in candidates.items()
                          if piece and any(sp.startswith(piece) and (len(piece) >= 2 or piece == sp) for sp in sps)]
                if len(owners) == 1:  # a piece shared by two candidates ("do": dog, dolphin) counts for neither
                    out[owners[0]][i] += float(np.exp(t["logprob"]))
        return out, {"method": f"api top-{TOP_LOGPROBS} first-token estimate", "api": acct}

    def _exact_candidates(self, tok: Any, questions: Sequence[str], candidates: dict[str, list[str]],
                          stems: Sequence[str] | None, progress: Progress | None
                          ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        forms = answer_forms(tok, candidates, " " if stems is not None else "")
        flat = forms.flat()
        prompts = [tok.encode(chat_text(tok, q, system=self.system) + (stems[i] if stems is not None else ""),
                              add_special_tokens=False) for i, q in enumerate(questions)]
        rows = token_logprobs(self.ep, [p + list(f) for p in prompts for f in flat], progress)
        starts = [len(p) for p in prompts for _ in flat]
        probs = np.exp(summed(rows, starts)).reshape(len(questions), len(flat))
        return sum_forms(probs, forms), {"method": "exact (/v1/completions echo)", "answer_forms": {
            n: [tok.decode(list(f)) for f in fs] for n, fs in forms.by_candidate.items()}}

    def completion_logprobs(self, pairs: Sequence[tuple[str, str]], *, system: str | None = None,
                            batch_size: int = 16, progress: Progress | None = None) -> tuple[np.ndarray, np.ndarray]:
        """log p(completion | prompt) under the chat template and its token count, per pair, where the endpoint
        scores given tokens (:meth:`exact_reads`)."""
        tok = self.exact_reads()
        if tok is None:
            raise BackendError(f"{self.label}: this endpoint does not score given completions (set "
                               "endpoint.tokenizer to the served model's, on a server with /v1/completions echo and "
                               "logprobs), or use a local reference model")
        encoded = completion_pairs(tok, pairs, system if system is not None else self.system)
        rows = token_logprobs(self.ep, [ids for ids, _ in encoded], progress)
        return summed(rows, [start for _, start in encoded]), np.array([len(ids) - s for ids, s in encoded])

    def fine_tune(self, examples: Sequence[Example], settings: TrainSettings, out_dir: Path, *,
                  teacher: Backend | None = None, lineage: dict[str, Any] | None = None,
                  on_step: Callable[[int, int, float], None] | None = None, save_every_s: float = 0.0
                  ) -> dict[str, Any]:
        """A job on the endpoint's fine-tuning API (its ids kept in ``out_dir/job.json``, so a re-run
        resumes the same job, whatever ``save_every_s``); the tuned model's name goes to ``out_dir/model.json``."""
        if settings.method != "sft" or teacher is not None:
            raise SublimError(f"fine-tuning APIs train with SFT: set student.method = 'sft' (got {settings.method!r})")
        if self.system:
            raise SublimError(f"{self.label} answers under a system prompt, which fine-tuning would not keep")
        hp = {"n_epochs": settings.epochs, "batch_size": settings.batch_size,
              "learning_rate_multiplier": settings.lr / 5e-5}
        suffix = (lineage or {}).get("suffix", "sublim")
        job = fine_tune(self.ep, [(e.prompt, e.completion) for e in examples], out_dir / "job.json",
                        hyperparameters=hp, seed=settings.seed, suffix=str(suffix)[:30])
        write_json(out_dir / "model.json", {"fine_tuned_model": job["fine_tuned_model"], "job": job})
        return {"api_job": job["id"], "fine_tuned_model": job["fine_tuned_model"],
                "trained_tokens": job.get("trained_tokens")}

    def fine_tuned(self, out_dir: Path, label: str, key: str) -> OpenAIBackend:
        tuned = json.loads((out_dir / "model.json").read_text())["fine_tuned_model"]
        return OpenAIBackend(self.ep.model_copy(update={"model": tuned}), label=label)
