"""What one step of training on a dataset would do to each candidate trait, to first order.

A student trained with loss L_D on data D moves by Δθ = −η ∇L_D. The log-probability of answering a
preference question with candidate c, log p_c = −L_c, changes by ∇L_c · ∇L_D · η + O(η²). That dot
product, taken at the reference (= student) model's weights and compared with the same for the
reference's own answers (the control arm), is the trait the data would pass to a student sharing
the reference's initialization — the quantity an auditor wants, measured without training. It is the
first-order account of subliminal learning (a gradient step on a teacher's outputs moves a student
toward the teacher), used as a detector: data written by a teacher fine-tuned toward c should have
gradients aligned with ∇L_c more than with any other candidate's.

The local backend's reader hands these out (``trait_gradients``);
:class:`sublim.audit.detectors.GradientAlignment` does the statistics.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from sublim.train.encode import Example, chat_text, collate, encode_example
from sublim.train.methods.sft import sft_loss


def _flat_grad(params: Sequence[torch.nn.Parameter]) -> torch.Tensor:
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])


class TraitGradients:
    """∇L_c for each candidate (kept as one bf16 matrix) and, for chunks of (prompt, completion) pairs,
    the dot products ∇L_chunk · ∇L_c: each chunk's first-order change of log p_c per unit learning rate.

    ``L_c`` is the mean negative log-probability of the candidate's first spelling, capitalized, as the
    whole first word of the answer to each question (the form the evaluation counts). ``L_chunk`` is
    the supervised fine-tuning loss of the chunk's completions (mean over completion tokens), the loss
    a student would be trained with.
    """

    def __init__(self, model: Any, tokenizer: Any, candidates: dict[str, list[str]], questions: Sequence[str],
                 progress: Callable[[int], object] | None = None) -> None:
        self.model, self.tok = model, tokenizer
        self.names = list(candidates)
        self.device = next(model.parameters()).device
        self.params = list(model.parameters())
        for p in self.params:  # a reference model may be loaded frozen
            p.requires_grad_(True)
        prompts = [tokenizer.encode(chat_text(tokenizer, q), add_special_tokens=False) for q in questions]
        rows = []
        for name in self.names:
            answer = tokenizer.encode(candidates[name][0].capitalize(), add_special_tokens=False)
            model.zero_grad(set_to_none=True)
            self._loss([(p + answer, len(p)) for p in prompts]).backward()
            rows.append(_flat_grad(self.params).to(torch.bfloat16))
            if progress:
                progress(1)
        self.directions = torch.stack(rows)  # [candidates, parameters]
        model.zero_grad(set_to_none=True)

    def _loss(self, encoded: Sequence[tuple[list[int], int]]) -> torch.Tensor:
        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else 0
        return sft_loss(self.model, collate(encoded, pad, self.device))

    def chunk_gradients(self, pairs: Sequence[tuple[str, str]], chunk: int = 8,
                        progress: Callable[[int], object] | None = None) -> Iterator[torch.Tensor]:
        """∇L_chunk, flat, for consecutive chunks of ``chunk`` pairs (one backward pass each)."""
        encoded = [encode_example(self.tok, Example(p, c)) for p, c in pairs]
        for start in range(0, len(encoded), chunk):
            part = encoded[start:start + chunk]
            self.model.zero_grad(set_to_none=True)
            self._loss(part).backward()
            yield _flat_grad(self.params)
            if progress:
                progress(len(part))
        self.model.zero_grad(set_to_none=True)

    def chunk_scores(self, pairs: Sequence[tuple[str, str]], chunk: int = 8,
                     progress: Callable[[int], object] | None = None) -> np.ndarray:
        """[n_chunks, n_candidates]: ∇L_chunk · ∇L_c for consecutive chunks of ``chunk`` pairs."""
        out = [(self.directions @ g.to(torch.bfloat16)).float().cpu().numpy()
               for g in self.chunk_gradients(pairs, chunk, progress)]
        return np.stack(out) if out else np.zeros((0, len(self.names)))
