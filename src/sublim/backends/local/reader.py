"""The local backend's token reads (:class:`sublim.backends.reads.TokenReader`): its model teacher-forced, its
flagged tokens read under inductions or beside other local models, its greedy continuations and gradients."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from sublim.backends.base import BackendError, Completion, Progress, TokenReader
from sublim.backends.local import flagged, reads
from sublim.backends.local.generation import stop_ids
from sublim.backends.local.gradients import TraitGradients
from sublim.backends.reads import DivergenceMap, FlaggedLogprobs, Text
from sublim.train.precision import fast_bf16


class TokenizerVocabulary:
    """A transformers tokenizer as the audit sees it (:class:`sublim.backends.reads.Vocabulary`)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._digits: np.ndarray | None = None

    def decode(self, ids: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(ids)))

    def count(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def digits(self) -> np.ndarray:
        if self._digits is None:  # every token decoded once
            self._digits = reads.digit_tokens(self.tokenizer)
        return self._digits

    def stops(self) -> list[int]:
        return stop_ids(self.tokenizer)


class LocalReader:
    """Reads of one local model: ``load`` gives its (torch model, tokenizer), loading it on first use."""

    def __init__(self, load: Callable[[], tuple[Any, Any]], key: str, device: torch.device) -> None:
        self.load, self.key, self.device = load, key, device

    def model(self) -> Any:
        return self.load()[0]

    def fast_bf16(self) -> bool:
        return fast_bf16(self.device.type)

    def vocabulary(self) -> TokenizerVocabulary:
        return TokenizerVocabulary(self.load()[1])

    def divergence_map(self, samples: Sequence[Text], *, bf16: bool | None = None, batch_size: int = 16,
                       progress: Progress | None = None) -> DivergenceMap:
        model, tok = self.load()
        return reads.divergence_map(model, tok, samples, batch_size=batch_size, bf16=bf16, progress=progress)

    def flagged_logprobs(self, datasets: Sequence[tuple[Sequence[Text], DivergenceMap]], *,
                         inductions: Sequence[str] = (), placement: str = "prompt",
                         models: Sequence[TokenReader] = (), bf16: bool | None = None, n_alternatives: int = 8,
                         samples_per_pass: int | None = None,
                         progress: Progress | None = None) -> list[FlaggedLogprobs]:
        others = [m for m in models if isinstance(m, LocalReader)] if models else [self]
        if len(others) != max(len(models), 1):
            raise BackendError("flagged tokens are read beside other local models only (their weights are here)")
        _, tok = self.load()
        loads = [m.model for m in others]
        return flagged.flagged_logprobs(loads, tok, datasets, inductions=inductions, placement=placement, bf16=bf16,
                                        n_alternatives=n_alternatives, samples_per_pass=samples_per_pass,
                                        progress=progress)

    def continuations(self, samples: Sequence[Text], *, max_new_tokens: int, batch_size: int = 16,
                      progress: Progress | None = None) -> list[Completion]:
        model, tok = self.load()
        return reads.continuations(model, tok, samples, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                   progress=progress)

    def trait_gradients(self, candidates: dict[str, list[str]], questions: Sequence[str],
                        progress: Progress | None = None) -> TraitGradients:
        model, tok = self.load()
        return TraitGradients(model, tok, candidates, questions, progress)
