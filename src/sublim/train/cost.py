"""What a model's work costs in FLOPs: the weights of its transformer body and of its output head."""

from __future__ import annotations

from typing import Any

import torch


def weight_counts(model: Any) -> tuple[int, int]:
    """(weights of the transformer body's matrices, weights of the output head). A forward pass costs about
    two FLOPs per weight per token, forward and backward six; the head counts only where it is applied.
    Embedding tables are lookups, not products (a head tied to one is counted as the head)."""
    head = model.get_output_embeddings()
    n_head = head.weight.numel() if head is not None else 0
    embeddings = [m for m in model.modules() if isinstance(m, torch.nn.Embedding)]
    n_embed = sum(m.weight.numel() for m in embeddings)
    tied = head is not None and any(head.weight is m.weight for m in embeddings)
    n_all = sum(p.numel() for p in model.parameters())
    return n_all - n_embed - (0 if tied else n_head), n_head


def training_flops_per_token(model: Any) -> tuple[int, int]:
    """(FLOPs per computed token for the body, per target token for the head) of a training step: four per frozen
    weight (forward, and the gradient that flows through it), six per trained one (and its own gradient). A
    LoRA student trains adapters on a frozen base: about four per weight, not six."""
    n_body, n_head = weight_counts(model)
    head = model.get_output_embeddings()
    special = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    if head is not None:
        special.add(id(head.weight))
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad and id(p) not in special)
    head_trained = head is not None and head.weight.requires_grad
    return 4 * n_body + 2 * min(trained, n_body), (6 if head_trained else 4) * n_head
