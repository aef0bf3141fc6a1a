"""Rows of a trained matrix read by index (the token embedding; the tied head's restricted columns), with a
gradient added straight into the matrix's own ``.grad``.

autograd's own gradient of ``weight[index]`` or of an embedding lookup is a zero-filled matrix the size of the
whole vocabulary (113 MB at 49k x 576), made twice a micro-batch for a tied embedding and then added into
``.grad``: on a 2-core CPU that filling and adding took more time than the rows' own arithmetic. Here the
matrix's ``.grad`` is made once a step and each read adds only its rows. The values read, and the gradient
that ends in ``.grad``, are the same.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch

ROWS = "_sublim_trained_rows"
"""The attribute of a vocabulary matrix whose training is confined to some rows: its :class:`TrainedRows`."""


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


class TrainedRows:
    """The rows of a vocabulary matrix that a training run can change, trained as a parameter of their own.

    A loss that reads the tied head at a few hundred columns (restricted distillation) and the embedding at the
    tokens of its data gives every other row a gradient of exactly zero at every step, and AdamW (no weight
    decay) leaves a row whose gradients were all zero exactly where it was. Training only the rows read gives
    the same model without a gradient and two optimizer moments the size of the vocabulary (340 MB at
    49k x 576, and the zero-filling of that gradient every step)."""

    def __init__(self, weight: torch.nn.Parameter, rows: torch.Tensor) -> None:
        self.weight, self.rows = weight, rows
        self.where = torch.full((weight.shape[0],), -1, dtype=torch.long, device=weight.device)
        self.where[rows] = torch.arange(len(rows), device=weight.device)
        self.param = torch.nn.Parameter(weight.detach()[rows].clone())

    def read(self, index: torch.Tensor, skip: int | None) -> torch.Tensor:
        local = self.where[index]
        if bool((local < 0).any()):
            raise RuntimeError("a training step read a vocabulary row outside the rows it declared it trains")
        local_skip = None if skip is None or int(self.where[skip]) < 0 else int(self.where[skip])
        return read_rows(self.param, local, local_skip)


@contextlib.contextmanager
def rows_trained(model: Any, ids: Sequence[Sequence[int]], head_columns: torch.Tensor | None
                 ) -> Iterator[list[torch.nn.Parameter]]:
    """Inside the block, the token embedding trains only the rows of ``ids`` (every token of the data) and
    the head only ``head_columns`` (a tied head: the union); yields the parameters that replace them.
    Afterwards the trained rows are written back into the matrices, which train whole again. Where the head
    reads the whole vocabulary (``head_columns`` None), a model computes its own embedding, or the matrices
    are not trained, nothing changes."""
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    wanted: dict[int, tuple[torch.nn.Parameter, list[torch.Tensor]]] = {}
    if _plain(emb) and emb.weight.requires_grad and head_columns is not None:
        device = emb.weight.device
        pad = [] if emb.padding_idx is None else [emb.padding_idx]
        tokens = torch.tensor(sorted({t for row in ids for t in row} | set(pad)), dtype=torch.long, device=device)
        wanted[id(emb.weight)] = (emb.weight, [tokens])
        if head is not None and head.weight.requires_grad:  # (a tied head: the same matrix, the rows joined)
            wanted.setdefault(id(head.weight), (head.weight, []))[1].append(head_columns.to(head.weight.device))
    confined = [TrainedRows(weight, torch.cat(parts).unique()) for weight, parts in wanted.values()]
    for c in confined:
        c.weight.requires_grad_(False)
        setattr(c.weight, ROWS, c)
    try:
        yield [c.param for c in confined]
    finally:
        for c in confined:
            delattr(c.weight, ROWS)
            with torch.no_grad():
                c.weight[c.rows] = c.param.detach()
            c.weight.requires_grad_(True)


def _plain(emb: Any) -> bool:
    """A plain embedding lookup, which :func:`embed` reads through :func:`read_rows`."""
    return type(emb) is torch.nn.Embedding and emb.max_norm is None and not emb.scale_grad_by_freq \
        and not emb.sparse


def read_rows(weight: torch.Tensor, index: torch.Tensor, skip: int | None = None) -> torch.Tensor:
    """``weight[index]``; when it is being trained, its gradient goes into ``weight.grad`` row by row (rows
    equal to ``skip`` get none), or into its :class:`TrainedRows`."""
    confined = getattr(weight, ROWS, None)
    if confined is not None and torch.is_grad_enabled():
        out_rows: torch.Tensor = confined.read(index, skip)
        return out_rows
    if weight.requires_grad and torch.is_grad_enabled():
        out: torch.Tensor = _Rows.apply(weight, index, skip)
        return out
    return weight[index]


def embed(model: Any, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """The decoder's input for token ``ids``: their embeddings read by :func:`read_rows` where the model's token
    embedding is a plain lookup (``inputs_embeds``), else the ids themselves (a scaled or otherwise special
    embedding computes its own)."""
    emb = model.get_input_embeddings()
    trained = emb.weight.requires_grad or hasattr(emb.weight, ROWS)
    if not _plain(emb) or not trained:
        return {"input_ids": ids}
    return {"inputs_embeds": read_rows(emb.weight, ids, emb.padding_idx)}
