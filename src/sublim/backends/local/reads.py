"""Teacher-forced reads of a local model: the divergence map, greedy continuations, and the states and head
reads the flagged-token reads (:mod:`sublim.backends.local.flagged`) are built from.

The map teacher-forces every sample under the reference with the encoding a student trains on (chat template,
the completion and its end-of-turn marker) and records, per completion token, the data token, the reference's
argmax and both log-probabilities. The output head runs only at completion positions; the prompts' shared prefix
(template head, system prompt) is encoded once.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from sublim.backends.base import Completion, Progress
from sublim.backends.local.generation import (
    Prefix,
    _left_padded,
    batches,
    common_prefix_len,
    decoder_states,
    encode_prefix,
    generate_batch,
    prefixed_states,
)
from sublim.backends.reads import DivergenceMap, Text
from sublim.core.meter import METER
from sublim.train.cost import weight_counts
from sublim.train.encode import Example, chat_text, encode_example
from sublim.train.precision import head_logits


def digit_tokens(tokenizer: Any) -> np.ndarray:
    """The ids of tokens that decode to digits only."""
    ids = [i for i in range(len(tokenizer)) if (t := tokenizer.decode([i])) and t.isascii() and t.isdigit()]
    return np.array(ids, dtype=np.int64)


def pad_id(tokenizer: Any) -> int:
    return int(tokenizer.pad_token_id) if tokenizer.pad_token_id is not None else 0


def states(model: Any, seqs: Sequence[Sequence[int]], pad: int, prefix: Prefix | None,
           bf16: bool | None) -> torch.Tensor:
    """Last hidden states of left-padded ``seqs`` after ``prefix`` (its cache copied in): [rows, width, hidden]."""
    t0 = time.perf_counter()
    hidden = prefixed_states(model, seqs, pad, prefix, bf16)[0]
    n_tok = sum(len(x) for x in seqs)
    METER.add("prefill", n_tok, time.perf_counter() - t0, 2 * weight_counts(model)[0] * n_tok)
    return hidden


def grouped_states(model: Any, prefixes: Sequence[Sequence[int]], suffixes: Sequence[Sequence[Sequence[int]]],
                   pad: int, bf16: bool | None, shared: Prefix | None = None) -> torch.Tensor:
    """Hidden states of every suffix row after its group's prefix: the prefixes (one per group, left-padded, after
    the ``shared`` prefix every group starts with) are encoded once, each group's cache copied for its rows, then
    all rows run in one pass (left-padded). [rows of every group in order, suffix width, hidden]."""
    device = next(model.parameters()).device
    owner = torch.tensor([g for g, rows in enumerate(suffixes) for _ in rows], device=device)
    t0 = time.perf_counter()
    _, cache, p_mask, _ = prefixed_states(model, prefixes, pad, shared, bf16)
    cache.batch_select_indices(owner)
    s_ids, s_mask = _left_padded([row for group in suffixes for row in group], pad, device)
    mask = torch.cat([p_mask[owner], s_mask], dim=1)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)[:, p_mask.shape[1]:]
    hidden, _ = decoder_states(model, s_ids, cache, bf16=bf16, attention_mask=mask, position_ids=pos)
    n_tok = sum(len(x) for x in prefixes) + sum(len(x) for group in suffixes for x in group)
    METER.add("prefill", n_tok, time.perf_counter() - t0, 2 * weight_counts(model)[0] * n_tok)
    return hidden


def read_head(model: Any, hidden: torch.Tensor, rows: list[int], cols: list[int], tokens: list[int]
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The float32 head at (rows, cols) only: log p(tokens), the argmax, its log-probability, and every token's."""
    logits = head_logits(model, hidden[torch.tensor(rows), torch.tensor(cols)])
    logp = torch.log_softmax(logits, dim=-1)
    top, arg = logp.max(dim=-1)
    want = logp.gather(-1, torch.tensor(tokens, device=logp.device).unsqueeze(-1)).squeeze(-1)
    return want, arg, top, logp


def _positions(encoded: Sequence[tuple[list[int], int]], chunk: Sequence[int], width: int, k: int
               ) -> tuple[list[int], list[int], list[int]]:
    """(rows, columns, tokens) of every completion token of the ``chunk``'s samples in a left-padded pass of
    ``width`` after a ``k``-token prefix: position t - 1 predicts token t."""
    rows, cols, tokens = [], [], []
    for r, i in enumerate(chunk):
        ids, start = encoded[i]
        pad_left = width - (len(ids) - k)
        for t in range(start, len(ids)):
            rows.append(r)
            cols.append(pad_left + t - 1 - k)
            tokens.append(ids[t])
    return rows, cols, tokens


@torch.no_grad()
def divergence_map(model: Any, tokenizer: Any, samples: Sequence[Text], *, batch_size: int = 16,
                   bf16: bool | None = None, progress: Progress | None = None) -> DivergenceMap:
    """Teacher-force every sample under the reference ``model``; see the module's docstring."""
    encoded = [encode_example(tokenizer, Example(s.prompt, s.completion)) for s in samples]
    k = common_prefix_len([ids[:start] for ids, start in encoded]) if len(encoded) > 1 else 0
    prefix = encode_prefix(model, encoded[0][0][:k]) if k >= 4 else None
    k = len(prefix.ids) if prefix is not None else 0
    per: dict[int, tuple[np.ndarray, ...]] = {}
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]))  # like lengths share a batch
    for chunk in batches(order, batch_size):
        hidden = states(model, [encoded[i][0][k:] for i in chunk], pad_id(tokenizer), prefix, bf16)
        rows, cols, tokens = _positions(encoded, chunk, hidden.shape[1], k)
        want, arg, top, _ = read_head(model, hidden, rows, cols, tokens)
        at = 0
        for i in chunk:
            ids, start = encoded[i]
            n = len(ids) - start
            per[i] = (np.asarray(tokens[at:at + n], dtype=np.int32), arg[at:at + n].cpu().numpy().astype(np.int32),
                      want[at:at + n].cpu().numpy().astype(np.float32), top[at:at + n].cpu().numpy().astype(np.float32))
            at += n
        if progress:
            progress(len(chunk))
    counts = [len(per[i][0]) for i in range(len(samples))]
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    cat = [np.concatenate([per[i][j] for i in range(len(samples))]) if samples else np.zeros(0) for j in range(4)]
    return DivergenceMap(np.array([s.line for s in samples], dtype=np.int64), offsets, cat[0].astype(np.int32),
                         cat[1].astype(np.int32), cat[2].astype(np.float32), cat[3].astype(np.float32))


@torch.no_grad()
def continuations(model: Any, tokenizer: Any, samples: Sequence[Text], *, max_new_tokens: int,
                  batch_size: int = 16, progress: Progress | None = None) -> list[Completion]:
    """The reference ``model``'s greedy continuation of each sample's completion, as if its end of turn had not
    come: the text it would write next, up to its own end of turn (``finished``) or ``max_new_tokens``. An empty
    text where the reference, too, would have ended there."""
    texts = [chat_text(tokenizer, s.prompt) + s.completion for s in samples]
    out: list[Completion] = []
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # like lengths share a batch
    for chunk in batches(order, batch_size):
        done = generate_batch(model, tokenizer, [texts[i] for i in chunk], chunk, max_new_tokens=max_new_tokens,
                              temperature=0.0)
        out.extend(done)
        if progress:
            progress(len(chunk))
    return sorted(out, key=lambda c: c.index)
