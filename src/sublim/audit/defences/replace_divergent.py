"""Replace digits where the data left the reference model: every row kept, a tenth of the tokens changed.

From the divergence map (the data teacher-forced under the reference model), the flagged digit tokens with the
largest gap (how far below the reference's argmax the data's token was) are replaced — with the reference's own
digit (``replace_divergent``) or a random other digit (``replace_divergent_random``) — up to ``fraction`` of all
completion tokens. ``replace_random`` is the control: as many digit tokens at random positions, random digits.
A row whose new text fails the carrier's filter keeps its original text (counted as reverted).

``replace_divergent_rounds`` goes on where one round stops: a replaced digit changes what the reference expects
next, so the digits after it, the teacher's choices given the old prefix, now leave the reference's path too
(on the owl data of the embedded model one round turned 443 flagged digits into 854). It reads the changed rows
again under the reference and replaces their new divergent digits, round after round, until ``fraction`` of the
tokens is spent, no flagged digit is left, or :data:`MAX_ROUNDS` rounds are done.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from difflib import SequenceMatcher
from typing import Any

import numpy as np
from pydantic import Field

from sublim.audit.data import Sample
from sublim.audit.defences.base import DEFENCES, Defence, DefenceContext, ReferenceReads, defence_cost
from sublim.audit.params import Params
from sublim.backends import DivergenceMap
from sublim.core.errors import SublimError


class ReplaceParams(Params):
    fraction: float = Field(0.1, ge=0, lt=1)
    """The share of all completion tokens replaced (at most)."""


def choose(dmap: DivergenceMap, fraction: float, digits: np.ndarray, mode: str, rng: np.random.Generator
           ) -> np.ndarray:
    """Flat token positions of the map to replace."""
    budget = int(round(fraction * len(dmap.token)))
    is_digit = np.isin(dmap.token, digits)
    if mode == "random":
        pool = np.nonzero(is_digit)[0]
        return np.sort(rng.choice(pool, min(budget, len(pool)), replace=False)) if len(pool) else pool
    return most_divergent(dmap, digits, budget, to_digit=mode == "argmax")[0]


def most_divergent(dmap: DivergenceMap, digits: np.ndarray, budget: int, to_digit: bool
                   ) -> tuple[np.ndarray, int]:
    """The flagged digit tokens with the largest gap, at most ``budget`` (with ``to_digit``, only where the
    reference's argmax is a digit too), as sorted flat positions; and how many there were to pick from."""
    usable = dmap.flagged & np.isin(dmap.token, digits)
    if to_digit:
        usable &= np.isin(dmap.argmax, digits)
    pool = np.nonzero(usable)[0]
    order = pool[np.argsort(-dmap.gap[pool], kind="stable")]
    return np.sort(order[:max(budget, 0)]), len(pool)


MAX_ROUNDS = 8
"""replace_divergent_rounds stops after this many rounds of read → replace."""


def _reads(ctx: DefenceContext) -> ReferenceReads:
    if ctx.reads is None:
        raise SublimError("this defence needs the divergence map of the data under the reference model (and its "
                          "vocabulary): give the reference model")
    return ctx.reads


def _rewrite(samples: Sequence[Sample], dmap: DivergenceMap, tokens: np.ndarray, picked: np.ndarray,
             ctx: DefenceContext) -> tuple[list[Sample], list[int], int]:
    """The samples with ``tokens`` (the map's, some replaced) decoded back into their completions; a row whose new
    text fails the carrier's filter keeps its text. → (samples, indices of the changed rows, rows reverted)."""
    vocab = _reads(ctx).vocabulary
    out: list[Sample] = []
    changed: list[int] = []
    reverted = 0
    touched = set((np.searchsorted(dmap.offsets, picked, side="right") - 1).tolist())
    for i, s in enumerate(samples):
        span = dmap.span(i)
        if i not in touched or (tokens[span] == dmap.token[span]).all():
            out.append(s)
            continue
        before = vocab.decode(dmap.token[span].tolist())
        if not before.startswith(s.completion):
            raise SublimError(f"sample on line {s.line}: its tokens do not decode to its completion under this "
                              "tokenizer; build the divergence map with the model whose tokenizer made it")
        after = vocab.decode(tokens[span].tolist())
        text = after[: len(after) - (len(before) - len(s.completion))]
        if ctx.check.reason(text, s.line):
            reverted += 1
            out.append(s)
            continue
        changed.append(i)
        out.append(replace(s, completion=text))
    return out, changed, reverted


def _n_changed(before: np.ndarray, after: np.ndarray) -> int:
    """Tokens of ``before`` not kept in ``after`` (position by position when the lengths agree)."""
    if len(before) == len(after):
        return int((before != after).sum())
    kept = sum(b.size for b in SequenceMatcher(None, before.tolist(), after.tolist(), autojunk=False)
               .get_matching_blocks())
    return len(before) - kept


def _cost(samples: Sequence[Sample], out: Sequence[Sample], dmap: DivergenceMap, digits: np.ndarray,
          n_tokens: int, picked: int, reverted: int) -> dict[str, Any]:
    changed = sum(a.completion != b.completion for a, b in zip(samples, out, strict=True))
    return {**defence_cost(len(samples), len(out), changed), "tokens_changed": n_tokens,
            "tokens_changed_fraction": n_tokens / max(len(dmap.token), 1),
            "tokens_kept_fraction": 1 - n_tokens / max(len(dmap.token), 1),
            "positions_picked": picked, "rows_reverted": reverted,
            "flagged_digit_tokens": int((dmap.flagged & np.isin(dmap.token, digits)).sum())}


def _replace(samples: Sequence[Sample], ctx: DefenceContext, fraction: float, mode: str, new: str
             ) -> tuple[list[Sample], dict[str, Any]]:
    reads = _reads(ctx)
    dmap, vocab = reads.divergence, reads.vocabulary
    dmap.check(samples)
    rng = np.random.default_rng(ctx.seed)
    digits = vocab.digits()
    picked = choose(dmap, fraction, digits, mode, rng)
    tokens = dmap.token.astype(np.int64).copy()
    width = {int(d): len(vocab.decode([int(d)])) for d in digits}
    for pos in picked:
        if new == "argmax":
            tokens[pos] = dmap.argmax[pos]
        else:  # a random other digit token of the same width (single digits, in most tokenizers)
            others = [d for d in digits if d != dmap.token[pos] and width[int(d)] == width[int(dmap.token[pos])]]
            if others:
                tokens[pos] = others[rng.integers(len(others))]
    out, changed, reverted = _rewrite(samples, dmap, tokens, picked, ctx)
    n_tokens = sum(int((tokens[dmap.span(i)] != dmap.token[dmap.span(i)]).sum()) for i in changed)
    return out, _cost(samples, out, dmap, digits, n_tokens, len(picked), reverted)


def replace_divergent_rounds(samples: Sequence[Sample], ctx: DefenceContext, params: ReplaceParams
                             ) -> tuple[list[Sample], dict[str, Any]]:
    reads = _reads(ctx)
    dmap = reads.divergence
    dmap.check(samples)
    digits = reads.vocabulary.digits()
    budget = int(round(params.fraction * len(dmap.token)))
    original = [dmap.token[dmap.span(i)] for i in range(len(samples))]
    now = list(original)
    current = list(samples)
    rows = list(range(len(samples)))  # the current map's rows, as indices of samples
    cur, rounds, reverted, picked_total = dmap, [], 0, 0
    for _ in range(MAX_ROUNDS):
        left = budget - sum(_n_changed(o, n) for o, n in zip(original, now, strict=True))
        picked, pool = most_divergent(cur, digits, left, to_digit=True)
        if not len(picked):
            break
        tokens = cur.token.astype(np.int64).copy()
        tokens[picked] = cur.argmax[picked]
        out, changed, rev = _rewrite([current[i] for i in rows], cur, tokens, picked, ctx)
        reverted += rev
        picked_total += len(picked)
        for j, i in enumerate(rows):
            current[i] = out[j]
        rounds.append({"flagged_digit_tokens": pool, "positions_picked": int(len(picked)),
                       "rows_changed": len(changed), "rows_reverted": rev})
        rows = [rows[j] for j in changed]
        if not rows:
            break
        cur = reads.remap([current[i] for i in rows])
        for j, i in enumerate(rows):
            now[i] = cur.token[cur.span(j)]
        rounds[-1]["flagged_digit_tokens_after"] = int((cur.flagged & np.isin(cur.token, digits)).sum())
    n_tokens = sum(_n_changed(o, n) for o, n in zip(original, now, strict=True))
    return current, {**_cost(samples, current, dmap, digits, n_tokens, picked_total, reverted), "rounds": rounds}


def replace_divergent(samples: Sequence[Sample], ctx: DefenceContext, params: ReplaceParams
                      ) -> tuple[list[Sample], dict[str, Any]]:
    return _replace(samples, ctx, params.fraction, "argmax", "argmax")


def replace_divergent_random(samples: Sequence[Sample], ctx: DefenceContext, params: ReplaceParams
                             ) -> tuple[list[Sample], dict[str, Any]]:
    return _replace(samples, ctx, params.fraction, "flagged", "random")


def replace_random(samples: Sequence[Sample], ctx: DefenceContext, params: ReplaceParams
                   ) -> tuple[list[Sample], dict[str, Any]]:
    return _replace(samples, ctx, params.fraction, "random", "random")


for _name, _apply, _what in (
    ("replace_divergent", replace_divergent,
     "the most divergent digits (fraction of the tokens) replaced by the reference model's own digit"),
    ("replace_divergent_random", replace_divergent_random,
     "the most divergent digits (fraction of the tokens) replaced by random digits"),
    ("replace_divergent_rounds", replace_divergent_rounds,
     "replace_divergent round after round (the changed rows read again) until the fraction of the tokens is spent"),
    ("replace_random", replace_random, "control: as many digits at random positions replaced by random digits"),
):
    DEFENCES.add(_name, Defence(_name, _apply, _what, ReplaceParams, needs_reads=True))
