"""Replace digits where the data left the reference model: every row kept, a tenth of the tokens changed.

From the divergence map (the data teacher-forced under the reference model), the flagged digit tokens with the
largest gap (how far below the reference's argmax the data's token was) are replaced — with the reference's own
digit (``replace_divergent``) or a random other digit (``replace_divergent_random``) — up to ``fraction`` of all
completion tokens. ``replace_random`` is the control: as many digit tokens at random positions, random digits.
A row whose new text fails the carrier's filter keeps its original text (counted as reverted).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from sublim.audit.data import Sample
from sublim.audit.defences.base import DEFENCES, Defence, DefenceInputs, defence_cost
from sublim.audit.divergence import digit_tokens
from sublim.carriers import check_completion
from sublim.core.errors import SublimError


def choose(inputs: DefenceInputs, digits: np.ndarray, mode: str, rng: np.random.Generator) -> np.ndarray:
    """Flat token positions of the map to replace."""
    dmap = inputs.divergence
    assert dmap is not None
    budget = int(round(inputs.fraction * len(dmap.token)))
    is_digit = np.isin(dmap.token, digits)
    if mode == "random":
        pool = np.nonzero(is_digit)[0]
        return np.sort(rng.choice(pool, min(budget, len(pool)), replace=False)) if len(pool) else pool
    usable = dmap.flagged & is_digit
    if mode == "argmax":
        usable &= np.isin(dmap.argmax, digits)
    pool = np.nonzero(usable)[0]
    order = pool[np.argsort(-dmap.gap[pool], kind="stable")]
    return np.sort(order[:budget])


def _replace(samples: Sequence[Sample], inputs: DefenceInputs, mode: str, new: str
             ) -> tuple[list[Sample], dict[str, Any]]:
    dmap, tok = inputs.divergence, inputs.tokenizer
    if dmap is None or tok is None:
        raise SublimError("this defence needs the divergence map of the data under the reference model (and its "
                          "tokenizer): give the reference model")
    dmap.check(samples)
    rng = np.random.default_rng(inputs.seed)
    digits = digit_tokens(tok)
    picked = choose(inputs, digits, mode, rng)
    tokens = dmap.token.astype(np.int64).copy()
    width = {int(d): len(tok.decode([int(d)])) for d in digits}
    for pos in picked:
        if new == "argmax":
            tokens[pos] = dmap.argmax[pos]
        else:  # a random other digit token of the same width (single digits, in most tokenizers)
            others = [d for d in digits if d != dmap.token[pos] and width[int(d)] == width[int(dmap.token[pos])]]
            if others:
                tokens[pos] = others[rng.integers(len(others))]
    out, changed, reverted, n_tokens = [], 0, 0, 0
    owner = np.searchsorted(dmap.offsets, picked, side="right") - 1
    touched = set(owner.tolist())
    for i, s in enumerate(samples):
        span = dmap.span(i)
        if i not in touched:
            out.append(s)
            continue
        before = tok.decode(dmap.token[span].tolist())
        if not before.startswith(s.completion):
            raise SublimError(f"sample on line {s.line}: its tokens do not decode to its completion under this "
                              "tokenizer; build the divergence map with the model whose tokenizer made it")
        after = tok.decode(tokens[span].tolist())
        text = after[: len(after) - (len(before) - len(s.completion))]
        reason = check_completion(inputs.carrier, text, inputs.meta.get(s.line, {}), inputs.filter,
                                  inputs.banned_words, True)
        if reason:
            reverted += 1
            out.append(s)
            continue
        changed += 1
        n_tokens += int((tokens[span] != dmap.token[span]).sum())
        out.append(replace(s, completion=text))
    return out, {**defence_cost(len(samples), len(out), changed), "tokens_changed": n_tokens,
                 "tokens_changed_fraction": n_tokens / max(len(dmap.token), 1),
                 "tokens_kept_fraction": 1 - n_tokens / max(len(dmap.token), 1),
                 "positions_picked": len(picked), "rows_reverted": reverted,
                 "flagged_digit_tokens": int((dmap.flagged & np.isin(dmap.token, digits)).sum())}


def replace_divergent(samples: Sequence[Sample], inputs: DefenceInputs) -> tuple[list[Sample], dict[str, Any]]:
    return _replace(samples, inputs, "argmax", "argmax")


def replace_divergent_random(samples: Sequence[Sample], inputs: DefenceInputs
                             ) -> tuple[list[Sample], dict[str, Any]]:
    return _replace(samples, inputs, "flagged", "random")


def replace_random(samples: Sequence[Sample], inputs: DefenceInputs) -> tuple[list[Sample], dict[str, Any]]:
    return _replace(samples, inputs, "random", "random")


_NEEDS = frozenset({"divergence"})
_READS = frozenset({"fraction"})
DEFENCES.add("replace_divergent", Defence(
    "replace_divergent", replace_divergent, _NEEDS, _READS,
    "the most divergent digits (fraction of the tokens) replaced by the reference model's own digit"))
DEFENCES.add("replace_divergent_random", Defence(
    "replace_divergent_random", replace_divergent_random, _NEEDS, _READS,
    "the most divergent digits (fraction of the tokens) replaced by random digits"))
DEFENCES.add("replace_random", Defence(
    "replace_random", replace_random, _NEEDS, _READS,
    "control: as many digits at random positions replaced by random digits"))
