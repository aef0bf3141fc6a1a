"""Restricted-vocabulary distillation: KL to the teacher over digit and separator tokens only, so
the trait's own tokens never enter the loss (the language-model analogue of the paper's
auxiliary-logit experiment)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from sublim.train.encode import collate, targets
from sublim.train.methods.base import METHODS, Encoded, StudentMethod, kl, masked_logits
from sublim.train.precision import autocast
from sublim.train.settings import TrainSettings

SEPARATOR_CHARS = set(" ,;\n.[]()")


def restricted_token_ids(tokenizer: Any) -> list[int]:
    """Tokens made only of digits and separators: the vocabulary number data can use."""
    ids = []
    for tid in range(len(tokenizer)):
        text = tokenizer.decode([tid])
        if text and all(ch.isdigit() or ch in SEPARATOR_CHARS for ch in text):
            ids.append(tid)
    return ids


def restricted_rows(batch: dict[str, torch.Tensor], restricted: torch.Tensor) -> torch.Tensor:
    """Among the masked positions, those whose target token is a digit/separator token."""
    return torch.isin(targets(batch), restricted)


@torch.no_grad()
def teacher_restricted_logits(teacher: Any, encoded: Sequence[tuple[list[int], int]], pad_id: int,
                              restricted: torch.Tensor, batch_size: int, device: torch.device
                              ) -> list[torch.Tensor]:
    """Per example, the teacher's restricted-vocabulary logits at its kept positions.

    Computed once before training (a few hundred floats per token), so later epochs need no
    teacher forward pass.
    """
    out: list[torch.Tensor] = []
    for start in range(0, len(encoded), batch_size):
        chunk = encoded[start : start + batch_size]
        batch = collate(chunk, pad_id, device)
        rows = restricted_rows(batch, restricted)
        with autocast(teacher):
            logits = masked_logits(teacher, batch, rows, restricted)
        counts = batch["target_mask"].sum(1).tolist()
        offset = 0
        for keep in torch.split(rows, counts):
            n = int(keep.sum())
            out.append(logits[offset : offset + n].cpu())
            offset += n
    return out


def _prepare(model: Any, tokenizer: Any, encoded: Encoded, settings: TrainSettings, teacher: Any | None
             ) -> tuple[Any, Any]:
    device = next(model.parameters()).device
    restricted = torch.tensor(restricted_token_ids(tokenizer), device=device)
    cached = teacher_restricted_logits(teacher, encoded, tokenizer.pad_token_id, restricted, settings.batch_size,
                                       device)
    return model, (restricted, cached)


def _loss(model: Any, batch: dict[str, torch.Tensor], state: Any, idx: list[int]) -> torch.Tensor:
    restricted, cached = state
    rows = restricted_rows(batch, restricted)
    teacher_logits = torch.cat([cached[i] for i in idx]).to(rows.device)
    return kl(masked_logits(model, batch, rows, restricted), teacher_logits)


METHODS.add("distill_restricted", StudentMethod(
    "distill_restricted", _loss, prepare=_prepare, head_columns=lambda state: state[0],
    needs_teacher=True, carriers=frozenset({"numbers"}),
    description="KL to the teacher over digit and separator tokens only"))
