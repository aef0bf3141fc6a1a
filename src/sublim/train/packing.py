"""A training batch as one packed row: the prefix its rows share once, then each row's own tokens, no padding.

A right-padded batch computes every row's copy of the shared prefix (the chat template's head and the
system prompt, a large share of a teacher's short examples) and every pad position. Packed, the linear
layers see each needed token once; attention runs per row on the prefix's keys and values plus the row's
own, through an attention function of ours that transformers calls in place of its own while
:func:`packed_states` runs. A row's prefix states do not depend on the rest of the row (causal attention),
so states and gradients are those of the padded batch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface

from sublim.train.rows import embed

NAME = "sublim_shared_prefix"
"""The attention implementation's name, registered with transformers."""


@dataclass
class Layout:
    """Where each row's tokens sit in the packed row."""

    prefix: int
    index: torch.Tensor
    """[rows, width]: packed position of each row's own tokens (0 where the row has ended)."""
    valid: torch.Tensor
    """[rows, width]: the row has a token there."""
    positions: torch.Tensor
    """[packed length]: each packed token's position in its own row."""
    lengths: list[int] = field(default_factory=list)
    """How many own tokens each row has (after the prefix), in packed order."""
    masks: dict[int | None, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    """Per sliding window (None: none): the prefix's mask and the rows' masks, built once per forward."""

    def mask(self, window: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        if window not in self.masks:
            pos = self.positions
            q = pos[self.index]  # [rows, width]
            k = torch.cat([pos[: self.prefix].expand(len(q), -1), q], dim=1)  # [rows, prefix + width]
            own = torch.cat([self.valid.new_ones(len(q), self.prefix), self.valid], dim=1)
            rows = own[:, None, :] & (k[:, None, :] <= q[:, :, None])  # the prefix, and the row causally
            pp = pos[: self.prefix]
            pre = pp[None, :] <= pp[:, None]  # the prefix, causally
            if window is not None:
                rows &= (q[:, :, None] - k[:, None, :]) < window
                pre &= (pp[:, None] - pp[None, :]) < window
            self.masks[window] = (pre, rows[:, None])
        return self.masks[window]


_LAYOUT: ContextVar[Layout | None] = ContextVar("sublim_packed_layout", default=None)


def _rows(t: torch.Tensor, lay: Layout) -> torch.Tensor:
    """[heads, packed, dim] -> [rows, heads, width, dim]: each row's own tokens, zero-padded to the width. Cut
    and padded by slices (whose gradients are slices again), not gathered by index: on a CPU the backward of
    a gather (an accumulating scatter into zeros) took longer than the attention's arithmetic."""
    parts = t[:, lay.prefix:].split(lay.lengths, dim=1)
    width = lay.index.shape[1]
    return torch.stack([F.pad(part, (0, 0, 0, width - part.shape[1])) for part in parts])


def _unrows(out: torch.Tensor, lay: Layout) -> torch.Tensor:
    """[rows, heads, width, dim] -> [packed - prefix, heads, dim]: each row's valid tokens, in packed order."""
    return torch.cat([o[:, :n].transpose(0, 1) for o, n in zip(out, lay.lengths, strict=True)])


def _softmax_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor,
                       scale: float, dropout: float = 0.0) -> torch.Tensor:
    """Attention of queries [b, heads, n, dim] on keys and values [b, kv heads, m, dim] (grouped queries share
    a key head; nothing is repeated) under a boolean ``mask`` [b, 1, n, m], computed in float32 like the
    library kernels accumulate (the scores are not rounded to bf16 before the softmax)."""
    b, heads, n, dim = q.shape
    groups = heads // k.shape[1]
    with torch.autocast(q.device.type, enabled=False):
        qg = q.float().reshape(b, k.shape[1], groups * n, dim)
        scores = (qg @ k.float().transpose(-1, -2)).view(b, k.shape[1], groups, n, -1) * scale
        scores = scores.masked_fill(~mask[:, :, None], float("-inf"))
        weights = F.dropout(torch.softmax(scores, -1), dropout).view(b, k.shape[1], groups * n, -1)
        return (weights @ v.float()).view(b, heads, n, dim).to(q.dtype)


def _attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask: Any,
               dropout: float = 0.0, scaling: float | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """Per-row attention over the shared prefix and the row's own tokens; output [1, packed, heads, dim]."""
    lay = _LAYOUT.get()
    if lay is None:
        raise RuntimeError("the packed attention runs only inside sublim.train.packing.packed_states")
    if kwargs.get("softcap") is not None:
        raise ValueError("packed attention does not support attention logit softcapping")
    q, k, v = query[0], key[0], value[0]  # [heads, packed, dim], [kv heads, packed, dim]
    scale = scaling if scaling is not None else q.shape[-1] ** -0.5
    p = lay.prefix
    pre_mask, row_mask = lay.mask(kwargs.get("sliding_window"))
    parts = []
    if p:
        pre = _softmax_attention(q[None, :, :p], k[None, :, :p], v[None, :, :p], pre_mask[None, None], scale, dropout)
        parts.append(pre[0].transpose(0, 1))  # [prefix, heads, dim]
    kr, vr = _rows(k, lay), _rows(v, lay)
    if p:
        kr = torch.cat([k[None, :, :p].expand(len(kr), -1, -1, -1), kr], dim=2)
        vr = torch.cat([v[None, :, :p].expand(len(vr), -1, -1, -1), vr], dim=2)
    parts.append(_unrows(_softmax_attention(_rows(q, lay), kr, vr, row_mask, scale, dropout), lay))
    return torch.cat(parts)[None], None


def _no_mask(*args: Any, **kwargs: Any) -> None:
    return None  # the packed attention builds its own masks


AttentionInterface.register(NAME, _attention)
AttentionMaskInterface.register(NAME, _no_mask)


def can_pack(model: Any) -> bool:
    """Whether the model's attention is one the packed path reproduces (SDPA or eager, no logit softcapping)."""
    cfg = model.config
    return getattr(cfg, "_attn_implementation", None) in ("sdpa", "eager", NAME) and \
        getattr(cfg, "attn_logit_softcapping", None) is None


def pack(batch: dict[str, torch.Tensor], prefix: int) -> tuple[torch.Tensor, Layout, torch.Tensor]:
    """(packed ids [1, length], layout, packed position of every target in the batch's row-major order)."""
    ids, lengths = batch["input_ids"], batch["attention_mask"].sum(1)
    device = ids.device
    own = (lengths - prefix).tolist()
    width = ids.shape[1] - prefix
    cols = torch.arange(width, device=device)
    valid = cols[None, :] < lengths[:, None] - prefix
    starts = prefix + torch.cumsum(torch.tensor([0, *own[:-1]], device=device), 0)
    index = torch.where(valid, starts[:, None] + cols[None, :], 0)
    packed = torch.cat([ids[0, :prefix], ids[:, prefix:][valid]])
    positions = torch.cat([torch.arange(prefix, device=device), (prefix + cols)[None, :].expand_as(valid)[valid]])
    layout = Layout(prefix, index, valid, positions, own)
    return packed[None], layout, index[batch["target_mask"][:, prefix:]]


@contextlib.contextmanager
def _switched(model: Any, layout: Layout | None) -> Iterator[None]:
    """transformers calls our attention function (with ``layout``) inside the block."""
    cfg = model.config
    before, token = cfg._attn_implementation, _LAYOUT.set(layout)
    cfg._attn_implementation = NAME
    try:
        yield
    finally:
        cfg._attn_implementation = before
        _LAYOUT.reset(token)


def packed_training(model: Any) -> contextlib.AbstractContextManager[None]:
    """For a training loop: the packed attention stays on through each backward pass, where gradient
    checkpointing computes the forward again (with the layout of the batch whose forward it was)."""
    return _switched(model, None) if can_pack(model) else contextlib.nullcontext()


def packed_states(model: Any, batch: dict[str, torch.Tensor], prefix: int) -> torch.Tensor:
    """The decoder's last hidden states at the batch's target positions, computed as one packed row."""
    ids, layout, targets = pack(batch, prefix)
    if model.config._attn_implementation == NAME:  # inside packed_training: the layout stays for the backward
        _LAYOUT.set(layout)
        switch: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
    else:
        switch = _switched(model, layout)
    with switch:
        hidden = model.get_decoder()(**embed(model, ids), position_ids=layout.positions[None]).last_hidden_state
    return hidden[0, targets]
