"""Logit distillation over the full vocabulary: KL to the teacher's next-token distribution."""

from __future__ import annotations

from typing import Any

import torch

from sublim.train.methods.base import METHODS, Encoded, StudentMethod, kl, masked_logits
from sublim.train.settings import TrainSettings


def _keep_teacher(model: Any, tokenizer: Any, encoded: Encoded, settings: TrainSettings,
                  teacher: Any | None) -> tuple[Any, Any]:
    return model, teacher


def _loss(model: Any, batch: dict[str, torch.Tensor], teacher: Any, idx: list[int]) -> torch.Tensor:
    with torch.no_grad():
        teacher_logits = masked_logits(teacher, batch)
    return kl(masked_logits(model, batch), teacher_logits)


METHODS.add("distill_full", StudentMethod("distill_full", _loss, prepare=_keep_teacher, needs_teacher=True,
                                          description="KL to the teacher over the full vocabulary"))
