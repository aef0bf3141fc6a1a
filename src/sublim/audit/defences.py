"""Defences: transforms of a dataset that may strip a hidden trait, each with its recorded cost.

Number defences rewrite only completions that are number lists (separators and format kept);
anything else passes through unchanged and is counted as untouched.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from sublim.audit.data import Sample
from sublim.errors import SublimError

DEFENCES = ("sort", "remap", "shuffle", "drop_top")
"""The pure transforms; ``regenerate`` (below) needs a model."""
_SPLIT = re.compile(r"(\d+)")
_LIST = re.compile(r"^[\s\[\](){}]*\d+([\s,;]+\d+)*[\s\]\)}.]*$")


@dataclass(frozen=True)
class DefenceCost:
    n_in: int
    n_out: int
    n_changed: int

    def as_dict(self) -> dict[str, Any]:
        return {"n_in": self.n_in, "n_out": self.n_out, "kept_fraction": self.n_out / max(self.n_in, 1),
                "changed_fraction": self.n_changed / max(self.n_out, 1)}


def _rewrite(text: str, change: Callable[[list[int]], list[int]]) -> str:
    """The same text with its numbers replaced by ``change(numbers)``, digit widths as produced."""
    if not _LIST.match(text):
        return text
    parts = _SPLIT.split(text)
    nums = [int(p) for p in parts[1::2]]
    new = change(nums)
    parts[1::2] = [str(v) for v in new]
    return "".join(parts)


def _digit_preserving_permutation(seed: int) -> dict[int, int]:
    """A random bijection of 0..999 that keeps each number's digit count (so filters still pass)."""
    rng = random.Random(seed)
    mapping: dict[int, int] = {}
    for lo, hi in ((0, 9), (10, 99), (100, 999)):
        values = list(range(lo, hi + 1))
        shuffled = values[:]
        rng.shuffle(shuffled)
        mapping.update(zip(values, shuffled, strict=True))
    return mapping


def apply_defence(samples: Sequence[Sample], method: str, seed: int = 0, scores: np.ndarray | None = None,
                  fraction: float = 0.1) -> tuple[list[Sample], DefenceCost]:
    """The defended samples and the cost. ``drop_top`` needs per-sample detector ``scores``."""
    if method not in DEFENCES:
        raise SublimError(f"unknown defence {method!r}: choose one of {', '.join(DEFENCES)}")
    if method == "drop_top":
        if scores is None or len(scores) != len(samples):
            raise SublimError("defence drop_top needs one detector score per sample (run an audit first)")
        k = int(round(fraction * len(samples)))
        drop = set(np.argsort(-np.asarray(scores))[:k].tolist())
        kept = [s for i, s in enumerate(samples) if i not in drop]
        return kept, DefenceCost(len(samples), len(kept), 0)
    rng = random.Random(seed)
    mapping = _digit_preserving_permutation(seed)
    change: Callable[[list[int]], list[int]]
    if method == "sort":
        change = sorted
    elif method == "remap":
        change = lambda nums: [mapping.get(v, v) for v in nums]  # noqa: E731
    else:
        change = lambda nums: rng.sample(nums, len(nums))  # noqa: E731
    out = [replace(s, completion=_rewrite(s.completion, change)) for s in samples]
    changed = sum(a.completion != b.completion for a, b in zip(samples, out, strict=True))
    return out, DefenceCost(len(samples), len(out), changed)


def few_shot_text(tokenizer: Any, prompt: str, shots: Sequence[Sample]) -> str:
    """Plain-text prompt for a model without chat training: answered examples, then the question."""
    bos = tokenizer.bos_token or ""
    return bos + "".join(f"Q: {s.prompt}\nA: {s.completion}\n\n" for s in shots) + f"Q: {prompt}\nA:"


def regenerate(model: Any, tokenizer: Any, samples: Sequence[Sample], pool: Sequence[Sample], *, shots: int,
               max_new_tokens: int, temperature: float, batch_size: int, seed: int, one_paragraph: bool,
               skip: set[int] | None = None) -> Iterator[list[tuple[Sample, bool]]]:
    """Each sample's prompt answered afresh by ``model``, batch by batch: (sample with the new completion,
    finished). With ``shots`` > 0 the model sees that many answered examples drawn from ``pool`` (never
    the sample's own prompt) as plain text, and its answer ends where it starts a new question (or, with
    ``one_paragraph``, at the first blank line); with 0, the model's chat template is used. Samples whose
    line is in ``skip`` are left out (already done)."""
    from sublim.models.generation import batches, chat_text, generate_batch

    if shots and len(pool) <= shots:
        raise SublimError(f"regenerate needs more than {shots} examples in the reference data to show as "
                          f"examples (has {len(pool)}): lower defence.shots or use more prompts")
    texts = []
    for s in samples:
        rng = random.Random(seed * 1_000_003 + s.line)
        examples = rng.sample([p for p in pool if p.prompt != s.prompt], shots) if shots else []
        texts.append(few_shot_text(tokenizer, s.prompt, examples) if shots else chat_text(tokenizer, s.prompt))
    stops = ("\nQ:", "\n\n") if one_paragraph else ("\nQ:",)
    order = sorted((i for i, s in enumerate(samples) if s.line not in (skip or set())),
                   key=lambda i: (len(texts[i]), i))
    for b, chunk in enumerate(batches(order, batch_size)):
        comps = generate_batch(model, tokenizer, [texts[i] for i in chunk], chunk, max_new_tokens=max_new_tokens,
                               temperature=temperature, seed=seed * 1_000_003 + b)
        out = []
        for c in comps:
            text, finished = c.text, c.finished
            for stop in stops if shots else ():
                if stop in text:
                    text, finished = text.split(stop)[0], True
            out.append((replace(samples[c.index], completion=text.strip()), finished))
        yield out
