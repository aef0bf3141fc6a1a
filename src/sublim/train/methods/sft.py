"""Supervised fine-tuning: cross-entropy on the completion tokens (the paper's recipe)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from sublim.train.encode import targets
from sublim.train.methods.base import METHODS, StudentMethod, masked_logits


def sft_loss(model: Any, batch: dict[str, torch.Tensor], state: Any = None, idx: list[int] | None = None
             ) -> torch.Tensor:
    """Mean cross-entropy of the completion tokens."""
    return F.cross_entropy(masked_logits(model, batch), targets(batch))


METHODS.add("sft", StudentMethod("sft", sft_loss, description="completion-only cross-entropy"))
