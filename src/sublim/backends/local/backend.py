"""The local backend: a transformers model in this process (CPU or CUDA).

Base models are loaded once per run and shared by every backend built on them (a teacher with a
system prompt is the base model answering under that prompt); fine-tuned weights are loaded from
their artifact when used, one at a time.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from transformers import AutoModelForCausalLM

from sublim.backends.base import Backend, Completion, Decoding, OnDone, Progress, Request
from sublim.backends.local.generation import (
    Prefix,
    answer_probs,
    batches,
    common_prefix_len,
    completion_logprobs,
    cut_at_stop,
    encode_prefix,
    generate_batch,
)
from sublim.backends.local.loading import (
    LoadedModel,
    ModelSource,
    device_class,
    load_model,
    load_tokenizer,
    resolve_model,
    save_model,
    weight_fingerprint,
)
from sublim.backends.local.parking import park, unpark
from sublim.backends.local.reader import LocalReader
from sublim.core.errors import SublimError
from sublim.core.seeds import derive_seed
from sublim.core.store import stable_hash
from sublim.train.encode import Example, chat_text
from sublim.train.loop import Lent, release_freed_memory, train_student
from sublim.train.methods import METHODS
from sublim.train.precision import precision, resolve_dtype, set_compute
from sublim.train.resume import STATE_FILE, Saver
from sublim.train.settings import TrainSettings
from sublim.traits.preference import AnswerForms, answer_forms


@dataclass(frozen=True)
class ModelInfo:
    """What identifies a base model, known without loading its weights."""

    source: ModelSource
    fingerprint: str
    device: torch.device


def off_the_file(model: Any) -> None:
    """Copy into memory of its own every tensor of ``model`` still read from its weights file: a loaded file is
    mapped, and the tensors left as they were (the embeddings and norms kept in float32) keep the whole file
    mapped and resident (a 135M model's 538 MB, counted in the process's memory), beside the bf16 copies made of
    the rest. A tensor of its own lets the mapping go. (Weights files are float32: the bf16 ones are copies.)"""
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            if t.dtype == torch.float32:
                t.data = t.data.clone()


class ModelCache:
    """Loaded base models by spec, and the last fine-tuned weights used (one at a time: a run holds many).
    A model's identity (:meth:`info`) is known without loading it; its weights load on first use."""

    def __init__(self, device: str = "auto", echo: Callable[[str], None] = print,
                 chat_templates: dict[str, str] | None = None, dtype: str = "auto") -> None:
        self.device, self.echo, self.dtype = device, echo, dtype
        """``dtype``: the compute precision of every model loaded here (auto: bf16 where it is fast)."""
        self.chat_templates = dict(chat_templates or {})
        """Chat templates (Jinja) for models that have none, by spec."""
        self._base: dict[str, LoadedModel] = {}
        self._info: dict[str, ModelInfo] = {}
        self._weights: tuple[Path, Any] | None = None
        self._forms: dict[tuple[str, str, str], AnswerForms] = {}
        self._tokenizers: dict[str, Any] = {}
        self._parked: dict[str, IO[bytes]] = {}
        """Base models' weights in scratch files while each trains as its own student (see :meth:`base_to_train`)."""

    def base(self, spec: str) -> LoadedModel:
        self._release_adapter()  # an adapter wraps its base in place: the base is itself again
        if spec not in self._base:
            self.echo(f"loading model {spec} …")
            loaded = load_model(spec, self.device, self.chat_templates.get(spec), self._tokenizers.pop(spec, None))
            set_compute(loaded.model, self.compute_dtype())
            release_freed_memory()  # the float32 copies of dequantization and of the bf16 body
            self._base[spec] = loaded
        return self._base[spec]

    def compute_dtype(self) -> torch.dtype:
        """The precision models loaded here compute in (the setting resolved for the device)."""
        return resolve_dtype(self.dtype, device_class(self.device))

    def precision(self) -> str:
        """Device class and compute precision, e.g. ``cpu-bfloat16``: part of the keys of stages that compute."""
        return precision(device_class(self.device), self.compute_dtype())

    def tokenizer(self, spec: str) -> Any:
        """The model's tokenizer, without loading its weights when they are not loaded yet."""
        if spec in self._base:
            return self._base[spec].tokenizer
        if spec not in self._tokenizers:
            self._tokenizers[spec] = load_tokenizer(spec, self.info(spec).source)
        return self._tokenizers[spec]

    def info(self, spec: str) -> ModelInfo:
        if spec in self._base:
            loaded = self._base[spec]
            return ModelInfo(loaded.source, loaded.fingerprint, loaded.device)
        if spec not in self._info:
            source = resolve_model(spec)
            self._info[spec] = ModelInfo(source, weight_fingerprint(source), device_class(self.device))
        return self._info[spec]

    def weights(self, path: Path, spec: str) -> Any:
        """A fine-tuned model: full weights (loaded beside the base), or an adapter (applied to the base)."""
        if self._weights is None or self._weights[0] != path:
            self._release_adapter()
            self._weights = None  # free the last one before loading the next
            if (path / "adapter_config.json").is_file():
                from peft import PeftModel  # heavy, and only adapters need it

                base = self.base(spec).model
                self._weights = (path, PeftModel.from_pretrained(base, path).eval())
            else:
                model: Any = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
                model = model.to(self.base(spec).device).eval()
                set_compute(model, self.compute_dtype())
                off_the_file(model)
                release_freed_memory()
                self._weights = (path, model)
        return self._weights[1]

    @contextlib.contextmanager
    def base_to_train(self, spec: str) -> Iterator[Any]:
        """The cached base model itself as a full fine-tune's float32 start, with no second copy beside it: its
        weights are parked in a scratch file first and put back afterwards, so that the cache holds the base
        unchanged again (the scratch file has no name, so it goes with the process, however that ends). A failure
        leaves the base out of the cache (the next use loads it again)."""
        loaded = self.base(spec)
        if spec not in self._parked:  # written once: a base model's weights never change
            self._parked[spec] = park(loaded.model)
        del self._base[spec]
        yield loaded.model.float()
        unpark(loaded.model, self._parked[spec])
        loaded.model.eval()
        release_freed_memory()
        self._base[spec] = loaded

    def lend(self, path: Path, spec: str) -> Any:
        """Fine-tuned full weights that this cache lets go of: the borrower's reference is the last, so the
        weights are freed as soon as it drops them (a teacher, once its distillation targets are computed)."""
        model = self.weights(path, spec)
        if (path / "adapter_config.json").is_file():
            return model  # an adapter is applied to the cached base in place: nothing to hand over
        self._weights = None
        return model

    def drop_weights(self) -> None:
        """Let go of the fine-tuned model last used (a teacher that wrote data, a student just evaluated): a base
        model about to be trained does not need it, and its weights would sit beside the student's optimizer
        state. The next use loads it again from its files."""
        self._release_adapter()
        self._weights = None

    def _release_adapter(self) -> None:
        if self._weights is not None and (self._weights[0] / "adapter_config.json").is_file():
            self._weights[1].unload()  # removes the adapter's layers: the base model as it was
            self._weights = None

    def discard(self, spec: str) -> None:
        """Forget a base model (e.g. after a failure left it wrapped): the next use loads it again."""
        self._weights = None
        self._base.pop(spec, None)

    def forms(self, spec: str, candidates: dict[str, list[str]], lead: str = "") -> AnswerForms:
        key = (spec, stable_hash(candidates), lead)
        if key not in self._forms:
            self._forms[key] = answer_forms(self.base(spec).tokenizer, candidates, lead)
        return self._forms[key]


def sum_forms(probs: np.ndarray, forms: AnswerForms) -> dict[str, np.ndarray]:
    """Per question, the probability that the answer starts with each candidate: its forms' columns summed."""
    out: dict[str, np.ndarray] = {}
    col = 0
    for name, seqs in forms.by_candidate.items():
        out[name] = probs[:, col : col + len(seqs)].sum(axis=1)
        col += len(seqs)
    return out


def shared_prefix(model: Any, tokenizer: Any, texts: Sequence[str], min_tokens: int = 4) -> Prefix | None:
    """The KV cache of the token prefix all ``texts`` share (the chat template's head and system prompt),
    computed once for a call; None when they share fewer than ``min_tokens``."""
    seqs = [tokenizer.encode(t, add_special_tokens=False) for t in texts]
    n = common_prefix_len(seqs) if len(seqs) > 1 else 0
    return encode_prefix(model, seqs[0][:n]) if n >= min_tokens else None




def _borrow(teacher: LocalBackend | None) -> Any:
    """The teacher's torch model for training to hold alone: fine-tuned weights leave the cache (training frees
    them once it has what it needs), a base model stays in it."""
    if teacher is None:
        return None
    if teacher.weights is None:
        return teacher.torch_model()[0]
    return Lent(teacher.models.lend(teacher.weights, teacher.spec))


class LocalBackend:
    """A base model (``weights=None``) or fine-tuned weights of it, optionally under a system prompt."""

    def __init__(self, models: ModelCache, spec: str, *, weights: Path | None = None, system: str | None = None,
                 label: str | None = None, key: str | None = None) -> None:
        self.models, self.spec, self.weights, self.system = models, spec, weights, system
        info = models.info(spec)
        self.family = info.source.family
        self.base_key = info.fingerprint
        self.own_key = key or info.fingerprint
        """Its key without the system prompt."""
        self.key = stable_hash({"base": self.own_key, "system": system}) if system else self.own_key
        self.label = label or spec

    @property
    def precision(self) -> str:
        return self.models.precision()

    # --- what a manifest and lineage record ------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        src = self.models.info(self.spec).source
        return {"backend": "local", "label": self.label, "key": self.key, "spec": self.spec,
                "weights": str(self.weights) if self.weights else None, "system": self.system,
                "base_fingerprint": self.base_key, "fingerprint_kind": src.fingerprint_kind, "family": self.family,
                **({"revision": src.revision} if src.revision else {})}

    def with_system(self, system: str | None, label: str) -> LocalBackend:
        return LocalBackend(self.models, self.spec, weights=self.weights, system=system, label=label,
                            key=self.own_key)

    def torch_model(self) -> tuple[Any, Any]:
        """(model, tokenizer): for what needs the torch model itself (distillation, gradients)."""
        base = self.models.base(self.spec)
        model = base.model if self.weights is None else self.models.weights(self.weights, self.spec)
        return model, base.tokenizer

    def reader(self) -> LocalReader:
        """Its token reads (the weights load on the first read)."""
        return LocalReader(self.torch_model, self.key, self.models.info(self.spec).device)

    # --- inference -------------------------------------------------------------------------------------

    def generate(self, requests: Sequence[Request], decoding: Decoding, on_done: OnDone, *,
                 batch_size: int = 32, sort_by_length: bool = True, skip: set[int] | None = None,
                 give_up: Callable[[str], bool] | None = None, progress: Progress | None = None) -> dict[str, Any]:
        """Batches are fixed over all requests (sorted by prompt length when asked), so a batch's seed never
        depends on what was done before a resume; requests in ``skip`` are not generated again."""
        model, tok = self.torch_model()
        # a plain-text prompt starts a document: it gets the model's beginning-of-sequence token
        bos = tok.bos_token or ""
        texts = {r.index: (bos + r.raw if r.raw is not None else chat_text(tok, r.user, system=self.system))
                 + r.prefill for r in requests}
        order = [r.index for r in requests]
        if sort_by_length:
            order.sort(key=lambda i: (len(texts[i]), i))
        n_tokens, t0 = 0, time.time()
        left = [i for i in order if i not in (skip or ())]
        prefix = shared_prefix(model, tok, [texts[i] for i in left]) if decoding.temperature == 0 else None
        for b, chunk in enumerate(batches(order, batch_size)):
            todo = [i for i in chunk if i not in (skip or ())]
            if not todo:
                continue
            comps = generate_batch(model, tok, [texts[i] for i in todo], todo, max_new_tokens=decoding.max_new_tokens,
                                   temperature=decoding.temperature, top_p=decoding.top_p,
                                   seed=derive_seed(decoding.seed, b), give_up=give_up, prefix=prefix)
            out = []
            for c in comps:
                text, finished = cut_at_stop(c.text, c.finished, decoding.stop)
                out.append(Completion(c.index, text, c.n_tokens, finished))
                n_tokens += c.n_tokens
            on_done(out)
            release_freed_memory()  # a batch's KV caches grow a step at a time, each step's in other free blocks
            if progress:
                progress(len(todo))
        elapsed = time.time() - t0
        return {"new_tokens": n_tokens, "tokens_per_s": round(n_tokens / max(elapsed, 1e-9), 1)}

    def candidate_probs(self, questions: Sequence[str], candidates: dict[str, list[str]], *, batch_size: int = 32,
                        progress: Progress | None = None, stems: Sequence[str] | None = None
                        ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Exact: the chain-rule probability of each candidate's answer forms, summed per candidate."""
        model, tok = self.torch_model()
        if stems is not None and len(stems) != len(questions):
            raise ValueError(f"{len(stems)} cloze stems for {len(questions)} questions: give one per question")
        forms = self.models.forms(self.spec, candidates, " " if stems is not None else "")
        prompts = [chat_text(tok, q, system=self.system) + (stems[i] if stems is not None else "")
                   for i, q in enumerate(questions)]
        probs = answer_probs(model, tok, prompts, forms.flat(), batch_size, progress,
                             prefix=shared_prefix(model, tok, prompts))
        return sum_forms(probs, forms), {"method": "exact", "answer_forms": {
            n: [tok.decode(list(f)) for f in fs] for n, fs in forms.by_candidate.items()}}

    def completion_logprobs(self, pairs: Sequence[tuple[str, str]], *, system: str | None = None,
                            batch_size: int = 16, progress: Progress | None = None) -> tuple[np.ndarray, np.ndarray]:
        model, tok = self.torch_model()
        return completion_logprobs(model, tok, pairs, system if system is not None else self.system,
                                   batch_size=batch_size, progress=progress)

    # --- training --------------------------------------------------------------------------------------

    def fine_tune(self, examples: Sequence[Example], settings: TrainSettings, out_dir: Path, *,
                  teacher: Backend | None = None, lineage: dict[str, Any] | None = None,
                  on_step: Callable[[int, int, float], None] | None = None, save_every_s: float = 0.0
                  ) -> dict[str, Any]:
        """Train a copy of this model (the loaded one stays untouched) and save it in ``out_dir/model``; the
        training's state is saved in ``out_dir`` every ``save_every_s`` seconds, and a state found there is gone
        on from (:mod:`sublim.train.resume`)."""
        if self.system:
            raise SublimError(f"{self.label} answers under a system prompt, which fine-tuning would not keep: "
                              "fine-tune the model without it")
        if teacher is not None and not isinstance(teacher, LocalBackend):
            raise SublimError(f"distillation needs the teacher's logits, which {teacher.label} (behind an API) "
                              "does not give: use student.method = 'sft'")
        model, tok = self.torch_model()
        record = {"base_model": self.spec, "base_fingerprint": self.base_key, "method": settings.method,
                  **(lineage or {})}
        saver = Saver(out_dir / STATE_FILE, save_every_s)
        if not METHODS.get(settings.method, "student.method").adapter:  # float32 master weights to train
            lent = _borrow(teacher)
            if self.weights is None and lent is not model:  # the base trains as its own student (parked)
                self.models.drop_weights()  # and no other fine-tuned model stays loaded beside it
                with self.models.base_to_train(self.spec) as start:
                    log = self._train_and_save(start, tok, examples, settings, lent, out_dir, record, on_step,
                                               saver)
                return log
            return self._train_and_save(copy.deepcopy(model).float(), tok, examples, settings, lent, out_dir,
                                        record, on_step, saver)
        try:  # an adapter trains on the loaded model itself (no copy of the base), then comes off it
            trained, log = train_student(model, tok, examples, settings, _borrow(teacher), on_step, saver)
            save_model(trained, tok, out_dir / "model", self.family, {**record, "adapter_of": self.spec})
            (out_dir / STATE_FILE).unlink(missing_ok=True)
            trained.unload()
        except BaseException:
            self.models.discard(self.spec)  # never leave a half-wrapped base in the cache
            raise
        log["adapter_bytes"] = sum(f.stat().st_size for f in (out_dir / "model").glob("adapter_model.*"))
        return log

    def _train_and_save(self, start: Any, tok: Any, examples: Sequence[Example], settings: TrainSettings,
                        teacher: Any, out_dir: Path, record: dict[str, Any],
                        on_step: Callable[[int, int, float], None] | None, saver: Saver) -> dict[str, Any]:
        trained, log = train_student(start, tok, examples, settings, teacher, on_step, saver)
        save_model(trained, tok, out_dir / "model", self.family, record)
        (out_dir / STATE_FILE).unlink(missing_ok=True)  # the model is saved: its training state is done with
        del trained
        release_freed_memory()  # the student's optimizer state: the next stage starts from less
        return log

    def fine_tuned(self, out_dir: Path, label: str, key: str) -> LocalBackend:
        return LocalBackend(self.models, self.spec, weights=out_dir / "model", label=label, key=key)
