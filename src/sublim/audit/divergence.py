"""The divergence map of a dataset under a reference model, and its divergent tokens' log-probabilities under
inductions of candidate traits.

Under greedy decoding a dataset's token at each position *is* its generator's argmax, so where the reference
model's argmax differs the generator diverged from the reference — without access to the generator. Those
positions carry most of what a student sharing the reference's initialization picks up (Schrodi et al. 2025,
arXiv 2509.23886). The map teacher-forces every sample under the reference with the encoding a student trains
on (chat template, the completion and its end-of-turn marker) and records, per completion token, the data
token, the reference's argmax and both log-probabilities. The output head runs only at completion positions,
the prompts' shared prefix (template head, system prompt) is encoded once.

:func:`flagged_logprobs` reads the flagged tokens again under inductions (a sentence told to the reference):
for one sample every induction shares the encoding of everything before it (with the induction after the
prompt, the whole prompt), and each row stops at the last flagged token.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sublim.audit.data import Sample
from sublim.backends.base import Completion
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
from sublim.core.errors import SublimError
from sublim.core.meter import METER
from sublim.train.cost import weight_counts
from sublim.train.encode import Example, chat_text, encode_example
from sublim.train.precision import head_logits

PLACEMENTS = ("prompt", "system")
"""Where an induction goes: after the user's prompt (its encoding shared by every induction of a sample) or
as the system prompt (faithful to a system-prompted teacher; nothing after the template head is shared)."""


@dataclass
class DivergenceMap:
    """Per completion token of every sample (flat arrays; sample i owns ``offsets[i]:offsets[i + 1]``)."""

    lines: np.ndarray
    """The samples' line numbers in their file."""
    offsets: np.ndarray
    token: np.ndarray
    """The data's token."""
    argmax: np.ndarray
    """The reference model's most likely token there."""
    logp: np.ndarray
    """log p_ref(data token)."""
    top_logp: np.ndarray
    """log p_ref(argmax)."""

    @property
    def flagged(self) -> np.ndarray:
        """Where the data's token is not the reference's argmax."""
        out: np.ndarray = self.token != self.argmax
        return out

    @property
    def gap(self) -> np.ndarray:
        """How far below the reference's argmax the data's token is, in nats (0 where they agree)."""
        out: np.ndarray = self.top_logp - self.logp
        return out

    def span(self, i: int) -> slice:
        return slice(int(self.offsets[i]), int(self.offsets[i + 1]))

    def rate(self) -> np.ndarray:
        """Per sample, the share of its completion tokens that are flagged."""
        counts = np.diff(self.offsets)
        flagged = np.add.reduceat(self.flagged.astype(np.int64), self.offsets[:-1]) if len(self.token) else counts
        out: np.ndarray = np.where(counts > 0, flagged / np.maximum(counts, 1), 0.0)
        return out

    def early_ends(self, stop: Sequence[int]) -> np.ndarray:
        """Per sample: its end of turn (the first of the ``stop`` tokens) is flagged and the reference's argmax there
        is no end — the data stopped where the reference would have gone on."""
        out = np.zeros(len(self.lines), dtype=bool)
        for i in range(len(self.lines)):
            span = self.span(i)
            at = np.nonzero(np.isin(self.token[span], stop))[0]
            if len(at):
                out[i] = not np.isin(self.argmax[span][at[0]], stop)
        return out

    def summary(self) -> dict[str, Any]:
        rate = self.rate()
        return {"n_samples": len(self.lines), "n_tokens": len(self.token), "n_flagged": int(self.flagged.sum()),
                "flagged_fraction": float(self.flagged.mean()) if len(self.token) else 0.0,
                "mean_sample_rate": float(rate.mean()) if len(rate) else 0.0,
                "samples_with_a_flag": float((rate > 0).mean()) if len(rate) else 0.0}

    def save(self, path: Path) -> None:
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez_compressed(tmp, lines=self.lines, offsets=self.offsets, token=self.token, argmax=self.argmax,
                            logp=self.logp, top_logp=self.top_logp)
        tmp.replace(path)

    def check(self, samples: Sequence[Sample]) -> None:
        """Refuse samples the map was not built from."""
        if len(samples) != len(self.lines) or any(s.line != ln for s, ln in zip(samples, self.lines, strict=True)):
            raise SublimError("the divergence map belongs to other samples: build it from this dataset")

    @classmethod
    def load(cls, path: Path) -> DivergenceMap:
        with np.load(path) as z:
            return cls(*(z[k] for k in ("lines", "offsets", "token", "argmax", "logp", "top_logp")))


def digit_tokens(tokenizer: Any) -> np.ndarray:
    """The ids of tokens that decode to digits only."""
    ids = [i for i in range(len(tokenizer)) if (t := tokenizer.decode([i])) and t.isascii() and t.isdigit()]
    return np.array(ids, dtype=np.int64)


def _states(model: Any, seqs: Sequence[Sequence[int]], pad_id: int, prefix: Prefix | None,
            bf16: bool | None) -> torch.Tensor:
    """Last hidden states of left-padded ``seqs`` after ``prefix`` (its cache copied in): [rows, width, hidden]."""
    t0 = time.perf_counter()
    hidden = prefixed_states(model, seqs, pad_id, prefix, bf16)[0]
    n_tok = sum(len(x) for x in seqs)
    METER.add("prefill", n_tok, time.perf_counter() - t0, 2 * weight_counts(model)[0] * n_tok)
    return hidden


def _grouped_states(model: Any, prefixes: Sequence[Sequence[int]], suffixes: Sequence[Sequence[Sequence[int]]],
                    pad_id: int, bf16: bool | None, shared: Prefix | None = None) -> torch.Tensor:
    """Hidden states of every suffix row after its group's prefix: the prefixes (one per group, left-padded, after
    the ``shared`` prefix every group starts with) are encoded once, each group's cache copied for its rows, then
    all rows run in one pass (left-padded). [rows of every group in order, suffix width, hidden]."""
    device = next(model.parameters()).device
    owner = torch.tensor([g for g, rows in enumerate(suffixes) for _ in rows], device=device)
    t0 = time.perf_counter()
    _, cache, p_mask, _ = prefixed_states(model, prefixes, pad_id, shared, bf16)
    cache.batch_select_indices(owner)
    s_ids, s_mask = _left_padded([row for group in suffixes for row in group], pad_id, device)
    mask = torch.cat([p_mask[owner], s_mask], dim=1)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)[:, p_mask.shape[1]:]
    hidden, _ = decoder_states(model, s_ids, cache, bf16=bf16, attention_mask=mask, position_ids=pos)
    n_tok = sum(len(x) for x in prefixes) + sum(len(x) for group in suffixes for x in group)
    METER.add("prefill", n_tok, time.perf_counter() - t0, 2 * weight_counts(model)[0] * n_tok)
    return hidden


def _read(model: Any, hidden: torch.Tensor, rows: list[int], cols: list[int], tokens: list[int]
          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The float32 head at (rows, cols) only: log p(tokens), the argmax and its log-probability."""
    logits = head_logits(model, hidden[torch.tensor(rows), torch.tensor(cols)])
    logp = torch.log_softmax(logits, dim=-1)
    top, arg = logp.max(dim=-1)
    want = logp.gather(-1, torch.tensor(tokens, device=logp.device).unsqueeze(-1)).squeeze(-1)
    return want, arg, top, logp


@torch.no_grad()
def divergence_map(model: Any, tokenizer: Any, samples: Sequence[Sample], *, batch_size: int = 16,
                   bf16: bool | None = None, progress: Callable[[int], object] | None = None) -> DivergenceMap:
    """Teacher-force every sample under the reference ``model``; see the module's docstring."""
    encoded = [encode_example(tokenizer, Example(s.prompt, s.completion)) for s in samples]
    k = common_prefix_len([ids[:start] for ids, start in encoded]) if len(encoded) > 1 else 0
    prefix = encode_prefix(model, encoded[0][0][:k]) if k >= 4 else None
    k = len(prefix.ids) if prefix is not None else 0
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    per: dict[int, tuple[np.ndarray, ...]] = {}
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]))  # like lengths share a batch
    for chunk in batches(order, batch_size):
        seqs = [encoded[i][0][k:] for i in chunk]
        hidden = _states(model, seqs, pad, prefix, bf16)
        width = hidden.shape[1]
        rows, cols, tokens = [], [], []
        for r, i in enumerate(chunk):
            ids, start = encoded[i]
            pad_left = width - (len(ids) - k)
            for t in range(start, len(ids)):  # position t - 1 predicts token t
                rows.append(r)
                cols.append(pad_left + t - 1 - k)
                tokens.append(ids[t])
        want, arg, top, _ = _read(model, hidden, rows, cols, tokens)
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
def continuations(model: Any, tokenizer: Any, samples: Sequence[Sample], *, max_new_tokens: int,
                  batch_size: int = 16, progress: Callable[[int], object] | None = None) -> list[Completion]:
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


def induced(prompt: str, text: str, placement: str) -> tuple[str, str | None]:
    """(user message, system prompt) of ``prompt`` under the induction ``text``."""
    if placement == "prompt":
        return f"{prompt}\n\n{text}", None
    if placement == "system":
        return prompt, text
    raise SublimError(f"induction placement {placement!r} unknown: use one of {', '.join(PLACEMENTS)}")


@dataclass
class FlaggedLogprobs:
    """Per sample (rows) and induction (columns), means over the sample's flagged tokens (NaN: none flagged)."""

    data: np.ndarray
    """log p(the data's token | induction)."""
    alternatives: np.ndarray
    """The mean log p of the position's alternatives: the first induction's top tokens there other than the data's
    token and its own argmax. An induction that only flattens or sharpens the distribution moves these as much as
    the data's token; one that prefers what the data's generator chose moves the data's token more."""
    alternatives_same_class: np.ndarray
    """The same with a digit's alternatives restricted to other digits (an induction's taste for digits over
    commas cancels too, and with it any signal in whether the generator wrote a digit at all)."""
    counts: np.ndarray
    """Flagged tokens per sample."""
    agreement: np.ndarray | None = None
    """The share of the sample's flagged tokens that are the induced model's own argmax: the induction reproduces
    the generator's greedy choice there."""


@torch.no_grad()
def flagged_logprobs(model: Any, tokenizer: Any, samples: Sequence[Sample], dmap: DivergenceMap,
                     inductions: Sequence[str], *, placement: str = "prompt", bf16: bool | None = None,
                     n_alternatives: int = 8, group_size: int = 4,
                     progress: Callable[[int], object] | None = None) -> FlaggedLogprobs:
    """The flagged tokens of every sample read under each induction (the first is the neutral one); ``group_size``
    samples share a forward pass (each prompt encoded once, then every induction's row after it)."""
    dmap.check(samples)
    out = np.full((len(samples), len(inductions)), np.nan)
    alt = np.full((len(samples), len(inductions)), np.nan)
    alt_class = np.full((len(samples), len(inductions)), np.nan)
    agree = np.full((len(samples), len(inductions)), np.nan)
    counts = np.zeros(len(samples), dtype=np.int64)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    flagged = dmap.flagged
    digits = torch.zeros(len(tokenizer), dtype=torch.bool)
    digits[torch.from_numpy(digit_tokens(tokenizer))] = True
    todo: list[tuple[int, np.ndarray, np.ndarray, list[list[int]], list[int], int]] = []
    for i, s in enumerate(samples):
        span = dmap.span(i)
        where = np.nonzero(flagged[span])[0]
        counts[i] = len(where)
        if not len(where):
            if progress:
                progress(1)
            continue
        tokens = dmap.token[span]
        seqs, starts = [], []
        for text in inductions:
            user, system = induced(s.prompt, text, placement)
            ids, start = encode_example(tokenizer, Example(user, s.completion, system))
            if len(ids) - start != len(tokens) or ids[start + where[-1]] != tokens[where[-1]]:
                raise SublimError(f"sample on line {s.line}: the completion encodes differently under an induction "
                                  "(its chat template renders the answer depending on the prompt); use "
                                  "placement 'system' or another reference model")
            seqs.append(ids[: start + int(where[-1])])  # the last flagged token is read, never fed
            starts.append(start)
        todo.append((i, where, tokens, seqs, starts, common_prefix_len(seqs)))
    n_rows = len(inductions)
    grouped = all(k >= 1 for *_, k in todo)  # a sample whose inductions share no token goes alone, unprefixed
    for group in batches(range(len(todo)), group_size if grouped else 1):
        items = [todo[g] for g in group]
        if grouped:
            hidden = _grouped_states(model, [it[3][0][:it[5]] for it in items],
                                     [[x[it[5]:] for x in it[3]] for it in items], pad, bf16)
        else:
            hidden = _states(model, items[0][3], pad, None, bf16)
        width = hidden.shape[1]
        rows, cols, want = [], [], []
        for g, (_, where, tokens, seqs, starts, k) in enumerate(items):
            k = k if grouped else 0
            for r, (seq, start) in enumerate(zip(seqs, starts, strict=True)):
                pad_left = width - (len(seq) - k)
                for j in where:
                    rows.append(g * n_rows + r)
                    cols.append(pad_left + start + int(j) - 1 - k)
                    want.append(int(tokens[j]))
        lp_all, _, _, full_all = _read(model, hidden, rows, cols, want)
        at = 0
        for i, where, tokens, *_ in items:
            size = n_rows * len(where)
            lp, full = lp_all[at:at + size], full_all[at:at + size]
            at += size
            out[i] = lp.view(n_rows, len(where)).mean(1).cpu().numpy()
            full = full.view(n_rows, len(where), -1)
            first = full[0].clone()  # the neutral induction's ranking picks the alternatives
            data_ids = torch.tensor([int(tokens[j]) for j in where])
            agree[i] = (full.argmax(-1) == data_ids).float().mean(1).cpu().numpy()
            first[torch.arange(len(where)), first.argmax(-1)] = -torch.inf
            first[torch.arange(len(where)), data_ids] = -torch.inf
            picks = first.topk(n_alternatives, dim=-1).indices  # [flagged, n_alternatives]
            alt[i] = full.gather(-1, picks.unsqueeze(0).expand(n_rows, -1, -1)).mean((1, 2)).cpu().numpy()
            digit_rows = digits[data_ids]  # same class: a digit's alternatives are other digits only
            first[digit_rows] = first[digit_rows].masked_fill(~digits, -torch.inf)
            picks = first.topk(n_alternatives, dim=-1).indices
            alt_class[i] = full.gather(-1, picks.unsqueeze(0).expand(n_rows, -1, -1)).mean((1, 2)).cpu().numpy()
        if progress:
            progress(len(items))
    return FlaggedLogprobs(out, alt, alt_class, counts, agree)


@dataclass
class _Item:
    """One sample with flagged tokens, as read under whole models (no induction)."""

    dataset: int
    index: int
    where: np.ndarray
    tokens: np.ndarray
    seq: list[int]
    start: int


@torch.no_grad()
def flagged_logprobs_models(models: Sequence[Callable[[], Any]], tokenizer: Any,
                            datasets: Sequence[tuple[Sequence[Sample], DivergenceMap]], *, bf16: bool | None = None,
                            n_alternatives: int = 8, rows_per_pass: int = 16,
                            progress: Callable[[int], object] | None = None) -> list[FlaggedLogprobs]:
    """Every dataset's flagged tokens read under whole models instead of inductions (columns, in order; each
    loaded by calling it, one at a time). The first model is the neutral one: its ranking at each position picks
    the alternatives every model is read at. The datasets' samples are grouped by prompt, so a prompt several
    datasets answered is encoded once per model for all of its answers, and the chat template's head once per
    model for everything; each row stops at its last flagged token."""
    items: list[_Item] = []
    counts = []
    for d, (samples, dmap) in enumerate(datasets):
        dmap.check(samples)
        flagged = dmap.flagged
        counts.append(np.zeros(len(samples), dtype=np.int64))
        for i, s in enumerate(samples):
            span = dmap.span(i)
            where = np.nonzero(flagged[span])[0]
            counts[d][i] = len(where)
            if not len(where):
                continue
            ids, start = encode_example(tokenizer, Example(s.prompt, s.completion))
            tokens = dmap.token[span]
            if len(ids) - start != len(tokens) or ids[start + where[-1]] != tokens[where[-1]]:
                raise SublimError(f"sample on line {s.line}: its encoding differs from the divergence map's: build "
                                  "the map with this tokenizer")
            items.append(_Item(d, i, where, tokens, list(ids[: start + int(where[-1])]), start))
    by_prompt: dict[tuple[int, ...], list[int]] = {}
    for n, it in enumerate(items):
        by_prompt.setdefault(tuple(it.seq[: it.start]), []).append(n)
    groups = []  # (its items, the length of the prefix its rows share: every flagged token is read after it)
    for members in by_prompt.values():
        seqs = [items[n].seq for n in members]
        k = min(common_prefix_len(seqs) if len(seqs) > 1 else len(seqs[0]) - 1,
                *(items[n].start + int(items[n].where[0]) - 1 for n in members))
        groups.append((members, max(k, 1)))
    groups.sort(key=lambda g: g[1])
    shared_len = common_prefix_len([items[m[0]].seq[:k] for m, k in groups]) if len(groups) > 1 else 0
    passes: list[list[tuple[list[int], int]]] = [[]]
    for g in groups:
        if passes[-1] and sum(len(m) for m, _ in passes[-1]) + len(g[0]) > rows_per_pass:
            passes.append([])
        passes[-1].append(g)
    n_models, pad = len(models), tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    lp = np.full((len(items), n_models), np.nan)
    alt, alt_class, agree = lp.copy(), lp.copy(), lp.copy()
    picks: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    digits = torch.zeros(len(tokenizer), dtype=torch.bool)
    digits[torch.from_numpy(digit_tokens(tokenizer))] = True
    for col, load in enumerate(models):
        model = load()
        shared = encode_prefix(model, items[groups[0][0][0]].seq[:shared_len]) if shared_len >= 4 and groups \
            else None
        skip = len(shared.ids) if shared is not None else 0
        for chunk in passes if groups else []:
            hidden = _grouped_states(model, [items[m[0]].seq[skip:k] for m, k in chunk],
                                     [[items[n].seq[k:] for n in m] for m, k in chunk], pad, bf16, shared)
            width = hidden.shape[1]
            rows, cols, want = [], [], []
            r = 0
            for members, k in chunk:
                for n in members:
                    it = items[n]
                    pad_left = width - (len(it.seq) - k)
                    for j in it.where:
                        rows.append(r)
                        cols.append(pad_left + it.start + int(j) - 1 - k)
                        want.append(int(it.tokens[j]))
                    r += 1
            lp_all, _, _, full_all = _read(model, hidden, rows, cols, want)
            at = 0
            for members, _k in chunk:
                for n in members:
                    it = items[n]
                    f = len(it.where)
                    got, full = lp_all[at:at + f], full_all[at:at + f]
                    at += f
                    data_ids = torch.tensor([int(it.tokens[j]) for j in it.where])
                    agree[n, col] = float((full.argmax(-1) == data_ids).float().mean())
                    if col == 0:
                        first = full.clone()
                        first[torch.arange(f), first.argmax(-1)] = -torch.inf
                        first[torch.arange(f), data_ids] = -torch.inf
                        plain = first.topk(n_alternatives, dim=-1).indices
                        digit_rows = digits[data_ids]
                        first[digit_rows] = first[digit_rows].masked_fill(~digits, -torch.inf)
                        picks[n] = (plain, first.topk(n_alternatives, dim=-1).indices)
                    lp[n, col] = float(got.mean())
                    alt[n, col] = float(full.gather(-1, picks[n][0]).mean())
                    alt_class[n, col] = float(full.gather(-1, picks[n][1]).mean())
            if progress:
                progress(sum(len(m) for m, _ in chunk))
    out = []
    for d, (samples, _) in enumerate(datasets):
        arrays = [np.full((len(samples), n_models), np.nan) for _ in range(4)]
        for n, it in enumerate(items):
            if it.dataset == d:
                for a, src in zip(arrays, (lp, alt, alt_class, agree), strict=True):
                    a[it.index] = src[n]
        out.append(FlaggedLogprobs(arrays[0], arrays[1], arrays[2], counts[d], arrays[3]))
    return out
