"""The flagged tokens of divergence maps read again under columns: inductions (a sentence told to the reference)
and whole models (proxy teachers), through one read plan.

A plan lists every sample with a flagged token (an item) and its rows, one per induction, each stopping at the
sample's last flagged token (it is read, never fed); groups rows that share their encoding up to a prefix; and
packs the groups into passes. Under inductions a sample's rows are a group (with the induction after the prompt,
the whole prompt is shared), the groups sorted by their longest row, so a pass holds samples of like length.
Under whole models the rows of one prompt, whatever dataset answered it, are a group, the groups sorted by prefix
length, and the chat template's head every row starts with is encoded once per model. Each pass then runs its
groups' prefixes once, their rows after them, and the float32 head only at the flagged positions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from sublim.backends.base import Progress
from sublim.backends.local.generation import common_prefix_len, encode_prefix
from sublim.backends.local.reads import digit_tokens, grouped_states, pad_id, read_head, states
from sublim.backends.reads import DivergenceMap, FlaggedLogprobs, Text, induced
from sublim.core.errors import SublimError
from sublim.train.encode import Example, encode_example

Group = tuple[list[int], int]
"""The items whose rows share an encoded prefix, and its length in tokens."""


@dataclass
class Item:
    """One sample with flagged tokens, and its rows (one per induction): (tokens up to its last flagged token,
    where its completion starts)."""

    dataset: int
    index: int
    where: np.ndarray
    tokens: np.ndarray
    rows: list[tuple[list[int], int]]


@dataclass
class ReadPlan:
    items: list[Item]
    counts: list[np.ndarray]
    """Per dataset, the flagged tokens of each sample."""
    passes: list[list[Group]] = field(default_factory=list)
    shared: list[int] = field(default_factory=list)
    """The token prefix every row starts with, encoded once per model (empty: none)."""
    grouped: bool = True
    """False where some group shares no token: each group then runs alone, unprefixed."""


def _rows(tokenizer: Any, s: Text, where: np.ndarray, tokens: np.ndarray, inductions: Sequence[str],
          placement: str) -> list[tuple[list[int], int]]:
    """The sample's rows, checked to encode its completion as its map did."""
    out = []
    texts: Sequence[str | None] = inductions or [None]
    for text in texts:
        user, system = induced(s.prompt, text, placement) if text is not None else (s.prompt, None)
        ids, start = encode_example(tokenizer, Example(user, s.completion, system))
        if len(ids) - start != len(tokens) or ids[start + where[-1]] != tokens[where[-1]]:
            raise SublimError(
                f"sample on line {s.line}: the completion encodes differently under an induction (its chat template "
                "renders the answer depending on the prompt); use placement 'system' or another reference model"
                if text is not None else
                f"sample on line {s.line}: its encoding differs from the divergence map's: build the map with this "
                "tokenizer")
        out.append((list(ids[: start + int(where[-1])]), start))
    return out


def _items(tokenizer: Any, datasets: Sequence[tuple[Sequence[Text], DivergenceMap]], inductions: Sequence[str],
           placement: str) -> tuple[list[Item], list[np.ndarray]]:
    items: list[Item] = []
    counts = []
    for d, (samples, dmap) in enumerate(datasets):
        dmap.check(samples)
        flagged = dmap.flagged
        counts.append(np.zeros(len(samples), dtype=np.int64))
        for i, s in enumerate(samples):
            span = dmap.span(i)
            where = np.nonzero(flagged[span])[0]
            counts[d][i] = len(where)
            if len(where):
                tokens = dmap.token[span]
                items.append(Item(d, i, where, tokens, _rows(tokenizer, s, where, tokens, inductions, placement)))
    return items, counts


def plan_reads(tokenizer: Any, datasets: Sequence[tuple[Sequence[Text], DivergenceMap]], inductions: Sequence[str],
               placement: str, samples_per_pass: int) -> ReadPlan:
    """See the module's docstring; at most ``samples_per_pass`` items (of every row theirs) in a pass."""
    items, counts = _items(tokenizer, datasets, inductions, placement)
    by_prompt = not inductions
    keys: dict[object, list[int]] = {}
    for n, it in enumerate(items):
        seq, start = it.rows[0]
        keys.setdefault(tuple(seq[:start]) if by_prompt else n, []).append(n)
    groups: list[Group] = []
    for members in keys.values():
        seqs = [seq for n in members for seq, _ in items[n].rows]
        k = min(common_prefix_len(seqs), *(start + int(items[n].where[0]) - 1 for n in members
                                           for _, start in items[n].rows))
        groups.append((members, max(k, 1) if by_prompt else k))  # one prompt's rows share at least a token
    plan = ReadPlan(items, counts, grouped=all(k >= 1 for _, k in groups))
    if not plan.grouped:
        plan.passes = [[g] for g in groups]
        return plan
    if by_prompt:
        groups.sort(key=lambda g: g[1])
        if len(groups) > 1:
            prefixes = [items[m[0]].rows[0][0][:k] for m, k in groups]
            plan.shared = prefixes[0][:common_prefix_len(prefixes)]
    else:  # samples of like length share a pass: a pass is as wide as its longest row, the rest is padding
        groups.sort(key=lambda g: max(len(seq) - g[1] for n in g[0] for seq, _ in items[n].rows))
    for g in groups:
        if not plan.passes or (plan.passes[-1] and sum(len(m) for m, _ in plan.passes[-1]) + len(g[0])
                               > samples_per_pass):
            plan.passes.append([])
        plan.passes[-1].append(g)
    return plan


def _pass_reads(model: Any, plan: ReadPlan, groups: list[Group], pad: int, bf16: bool | None, shared: Any
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """One pass: log p(the data's token) and every token's log p at each flagged position, row by row."""
    rows_of = [[row for n in m for row in plan.items[n].rows] for m, _ in groups]
    if plan.grouped:
        skip = len(shared.ids) if shared is not None else 0
        hidden = grouped_states(model, [rows[0][0][skip:k] for rows, (_, k) in zip(rows_of, groups, strict=True)],
                                [[seq[k:] for seq, _ in rows] for rows, (_, k) in zip(rows_of, groups, strict=True)],
                                pad, bf16, shared)
    else:  # one group alone, no prefix
        hidden = states(model, [seq for seq, _ in rows_of[0]], pad, None, bf16)
    width, r = hidden.shape[1], 0
    at_rows, at_cols, want = [], [], []
    for members, k in groups:
        k = k if plan.grouped else 0
        for it in (plan.items[n] for n in members):
            for seq, start in it.rows:  # position t - 1 predicts token t
                pad_left = width - (len(seq) - k)
                for j in it.where:
                    at_rows.append(r)
                    at_cols.append(pad_left + start + int(j) - 1 - k)
                    want.append(int(it.tokens[j]))
                r += 1
    lp, _, _, full = read_head(model, hidden, at_rows, at_cols, want)
    return lp, full


@dataclass
class _Columns:
    """What the reads fill: per item (rows) and column, means over its flagged tokens."""

    lp: np.ndarray
    alt: np.ndarray
    alt_class: np.ndarray
    agree: np.ndarray
    digits: torch.Tensor
    n_alternatives: int
    picks: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    """Per item, the first column's alternatives at each flagged position: any token, and of the same class."""

    def add(self, n: int, item: Item, cols: slice, lp: torch.Tensor, full: torch.Tensor) -> None:
        """The item's reads under ``cols`` (one per row: [rows x flagged] and [rows x flagged x vocabulary])."""
        f, n_rows = len(item.where), len(item.rows)
        full = full.view(n_rows, f, -1)
        data_ids = torch.tensor([int(item.tokens[j]) for j in item.where])
        if n not in self.picks:  # the first column: its ranking picks the alternatives
            first = full[0].clone()
            first[torch.arange(f), first.argmax(-1)] = -torch.inf
            first[torch.arange(f), data_ids] = -torch.inf
            plain = first.topk(self.n_alternatives, dim=-1).indices  # [flagged, n_alternatives]
            digit_rows = self.digits[data_ids]  # same class: a digit's alternatives are other digits only
            first[digit_rows] = first[digit_rows].masked_fill(~self.digits, -torch.inf)
            self.picks[n] = (plain, first.topk(self.n_alternatives, dim=-1).indices)
        plain, same = self.picks[n]
        self.lp[n, cols] = lp.view(n_rows, f).mean(1).cpu().numpy()
        self.agree[n, cols] = (full.argmax(-1) == data_ids).float().mean(1).cpu().numpy()
        self.alt[n, cols] = full.gather(-1, plain.unsqueeze(0).expand(n_rows, -1, -1)).mean((1, 2)).cpu().numpy()
        self.alt_class[n, cols] = full.gather(-1, same.unsqueeze(0).expand(n_rows, -1, -1)).mean((1, 2)).cpu().numpy()

    def per_dataset(self, plan: ReadPlan) -> list[FlaggedLogprobs]:
        out = []
        for d, counts in enumerate(plan.counts):
            arrays = [np.full((len(counts), self.lp.shape[1]), np.nan) for _ in range(4)]
            for n, it in enumerate(plan.items):
                if it.dataset == d:
                    for a, src in zip(arrays, (self.lp, self.alt, self.alt_class, self.agree), strict=True):
                        a[it.index] = src[n]
            out.append(FlaggedLogprobs(arrays[0], arrays[1], arrays[2], counts, arrays[3]))
        return out


@torch.no_grad()
def flagged_logprobs(models: Sequence[Callable[[], Any]], tokenizer: Any,
                     datasets: Sequence[tuple[Sequence[Text], DivergenceMap]], *, inductions: Sequence[str] = (),
                     placement: str = "prompt", bf16: bool | None = None, n_alternatives: int = 8,
                     samples_per_pass: int | None = None, progress: Progress | None = None) -> list[FlaggedLogprobs]:
    """Every dataset's flagged tokens read under each of ``models`` (each loaded by calling it, one at a time)
    under each of ``inductions`` (none: the plain prompt): columns model by model, the first the neutral one.
    ``samples_per_pass`` defaults to 4 under inductions (each a row), 16 without. See the module's docstring."""
    per_pass = samples_per_pass or (4 if inductions else 16)
    plan = plan_reads(tokenizer, datasets, inductions, placement, per_pass)
    n_ind = max(len(inductions), 1)
    empty = np.full((len(plan.items), len(models) * n_ind), np.nan)
    digits = torch.zeros(len(tokenizer), dtype=torch.bool)
    digits[torch.from_numpy(digit_tokens(tokenizer))] = True
    got = _Columns(empty, empty.copy(), empty.copy(), empty.copy(), digits, n_alternatives)
    for m, load in enumerate(models):
        model = load() if plan.passes else None
        shared = encode_prefix(model, plan.shared) if len(plan.shared) >= 4 else None
        cols = slice(m * n_ind, (m + 1) * n_ind)
        for groups in plan.passes:
            lp, full = _pass_reads(model, plan, groups, pad_id(tokenizer), bf16, shared)
            at = 0
            for n in (n for members, _ in groups for n in members):
                size = len(plan.items[n].rows) * len(plan.items[n].where)
                got.add(n, plan.items[n], cols, lp[at:at + size], full[at:at + size])
                at += size
            if progress:
                progress(sum(len(members) for members, _ in groups))
    return got.per_dataset(plan)
