"""Regenerate: every completion written afresh by a model of another family, kept if it passes the
same carrier filter (a relative of the teacher may carry its trait, another family should not)."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from pydantic import Field

from sublim.audit.data import Sample
from sublim.audit.defences.base import DEFENCES, Defence, DefenceContext, defence_cost
from sublim.audit.params import Params
from sublim.backends import Completion, Decoding, Request
from sublim.carriers import CARRIERS
from sublim.core.errors import SublimError
from sublim.core.seeds import derive_seed


def few_shot_text(prompt: str, shots: Sequence[Sample]) -> str:
    """Plain-text prompt for a model without chat training: answered examples, then the question."""
    return "".join(f"Q: {s.prompt}\nA: {s.completion}\n\n" for s in shots) + f"Q: {prompt}\nA:"


def requests(samples: Sequence[Sample], pool: Sequence[Sample], shots: int, seed: int) -> list[Request]:
    """One request per sample: its prompt as a chat message, or (with ``shots``) as plain text after that many
    answered examples from ``pool`` (never the sample's own prompt)."""
    if shots and len(pool) <= shots:
        raise SublimError(f"regenerate needs more than {shots} examples in the reference data to show as "
                          f"examples (has {len(pool)}): lower defence.shots or use more prompts")
    out = []
    for s in samples:
        if not shots:
            out.append(Request(s.line, s.prompt))
            continue
        rng = random.Random(derive_seed(seed, s.line))
        examples = rng.sample([p for p in pool if p.prompt != s.prompt], shots)
        out.append(Request(s.line, s.prompt, raw=few_shot_text(s.prompt, examples)))
    return out


class RegenerateParams(Params):
    model: str = "gemma3-270m"
    """The model that rewrites the completions (catalog name, .gguf or directory), of another family than the
    data's generator: a relative of the teacher may carry its trait."""
    shots: int = Field(4, ge=0)
    """Answered examples shown before each prompt as plain text, so that a base model answers in the carrier's
    format; 0 = the model's own chat template."""


def regenerate(samples: Sequence[Sample], ctx: DefenceContext, params: RegenerateParams
               ) -> tuple[list[Sample], dict[str, Any]]:
    """Rewrite every sample with ``ctx.model`` (resuming from ``ctx.log``), keep what passes the filter."""
    if ctx.model is None:
        raise SublimError("defence regenerate needs a model of another family to rewrite the completions")
    carrier = CARRIERS.get(ctx.check.carrier, "carrier")
    reqs = requests(samples, ctx.pool, params.shots, ctx.seed)
    by_line = {s.line: s for s in samples}
    rows: dict[int, dict[str, Any]] = dict(ctx.log.rows) if ctx.log is not None else {}
    # a base model shown examples answers and goes on with a new question; one answer is one paragraph
    stops = (("\nQ:", "\n\n") if carrier.one_paragraph else ("\nQ:",)) if params.shots else ()

    def done(comps: list[Completion]) -> None:
        new: list[dict[str, Any]] = []
        for c in comps:
            text = c.text.strip()
            reason = ctx.check.reason(text, c.index, c.finished)
            new.append({"index": c.index, "prompt": by_line[c.index].prompt, "completion": text, "reject": reason})
        rows.update({r["index"]: r for r in new})
        if ctx.log is not None:
            ctx.log.add(new)

    ctx.model.generate(reqs, Decoding(ctx.temperature, max_new_tokens=ctx.max_new_tokens, seed=ctx.seed, stop=stops),
                       done, batch_size=ctx.batch_size, skip=set(rows), progress=ctx.progress)
    kept = [replace(by_line[i], completion=rows[i]["completion"]) for i in sorted(rows) if not rows[i]["reject"]]
    reasons = Counter(r["reject"] for r in rows.values() if r["reject"])
    return kept, {**defence_cost(len(samples), len(kept), len(kept)), "model": ctx.model.label,
                  "family": ctx.model.family, "reject_reasons": dict(reasons)}


DEFENCES.add("regenerate", Defence("regenerate", regenerate, "every completion rewritten by a model of another family",
                                   RegenerateParams, needs_model=True))
