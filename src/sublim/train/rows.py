"""Rows of a trained matrix read by index (the token embedding; the tied head's restricted columns), with a
gradient added straight into the matrix's own ``.grad``.

autograd's own gradient of ``weight[index]`` or of an embedding lookup is a zero-filled matrix the size of the
whole vocabulary (113 MB at 49k x 576), made twice a micro-batch for a tied embedding and then added into
``.grad``: on a 2-core CPU that filling and adding took more time than the rows' own arithmetic. Here the
matrix's ``.grad`` is made once a step and each read adds only its rows. The values read, and the gradient
that ends in ``.grad``, are the same.
"""

from __future__ import annotations

from typing import Any

import torch


class _Rows(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, weight: torch.Tensor, index: torch.Tensor, skip: int | None) -> torch.Tensor:
        ctx.weight, ctx.skip = weight, skip
        ctx.save_for_backward(index)
        return weight[index]

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, None, None]:
        (index,) = ctx.saved_tensors
        weight: torch.Tensor = ctx.weight
        flat, rows = index.reshape(-1), grad.reshape(-1, weight.shape[-1]).to(weight.dtype)
        if ctx.skip is not None:  # an embedding's padding row is never trained
            rows = rows * (flat != ctx.skip).unsqueeze(1).to(rows.dtype)
        if weight.grad is None:
            weight.grad = torch.zeros_like(weight)
        weight.grad.index_add_(0, flat, rows)
        return None, None, None


def read_rows(weight: torch.Tensor, index: torch.Tensor, skip: int | None = None) -> torch.Tensor:
    """``weight[index]``; when it is being trained, its gradient goes into ``weight.grad`` row by row (rows
    equal to ``skip`` get none)."""
    if weight.requires_grad and torch.is_grad_enabled():
        out: torch.Tensor = _Rows.apply(weight, index, skip)
        return out
    return weight[index]


def embed(model: Any, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """The decoder's input for token ``ids``: their embeddings read by :func:`read_rows` where the model's token
    embedding is a plain lookup (``inputs_embeds``), else the ids themselves (a scaled or otherwise special
    embedding computes its own)."""
    emb = model.get_input_embeddings()
    plain = type(emb) is torch.nn.Embedding and emb.max_norm is None and not emb.scale_grad_by_freq \
        and not emb.sparse
    if not plain or not emb.weight.requires_grad:
        return {"input_ids": ids}
    return {"inputs_embeds": read_rows(emb.weight, ids, emb.padding_idx)}
