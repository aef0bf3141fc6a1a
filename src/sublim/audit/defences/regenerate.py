"""Regenerate: every completion written afresh by a model of another family, kept if it passes the
same carrier filter (a relative of the teacher may carry its trait, another family should not)."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from sublim.audit.data import Sample
from sublim.audit.defences.base import DEFENCES, Defence, DefenceInputs, defence_cost
from sublim.backends import Completion, Decoding, Request
from sublim.carriers import CARRIERS, check_completion
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


def regenerate(samples: Sequence[Sample], inputs: DefenceInputs) -> tuple[list[Sample], dict[str, Any]]:
    """Rewrite every sample with ``inputs.model`` (resuming from ``inputs.log``), keep what passes the filter."""
    if inputs.model is None:
        raise SublimError("defence regenerate needs a model of another family to rewrite the completions")
    carrier = CARRIERS.get(inputs.carrier, "carrier")
    reqs = requests(samples, inputs.pool, inputs.shots, inputs.seed)
    by_line = {s.line: s for s in samples}
    rows: dict[int, dict[str, Any]] = dict(inputs.log.rows) if inputs.log is not None else {}
    # a base model shown examples answers and goes on with a new question; one answer is one paragraph
    stops = (("\nQ:", "\n\n") if carrier.one_paragraph else ("\nQ:",)) if inputs.shots else ()

    def done(comps: list[Completion]) -> None:
        new: list[dict[str, Any]] = []
        for c in comps:
            text = c.text.strip()
            reason = check_completion(inputs.carrier, text, inputs.meta.get(c.index, {}), inputs.filter,
                                      inputs.banned_words, c.finished)
            new.append({"index": c.index, "prompt": by_line[c.index].prompt, "completion": text, "reject": reason})
        rows.update({r["index"]: r for r in new})
        if inputs.log is not None:
            inputs.log.add(new)

    inputs.model.generate(reqs, Decoding(inputs.temperature, max_new_tokens=inputs.max_new_tokens,
                                         seed=inputs.seed, stop=stops), done,
                          batch_size=inputs.batch_size, skip=set(rows), progress=inputs.progress)
    kept = [replace(by_line[i], completion=rows[i]["completion"]) for i in sorted(rows) if not rows[i]["reject"]]
    reasons = Counter(r["reject"] for r in rows.values() if r["reject"])
    return kept, {**defence_cost(len(samples), len(kept), len(kept)), "model": inputs.model.label,
                  "family": inputs.model.family, "reject_reasons": dict(reasons)}


DEFENCES.add("regenerate", Defence("regenerate", regenerate, needs=frozenset({"model", "reference"}),
                                   reads=frozenset({"model", "shots"}),
                                   description="every completion rewritten by a model of another family"))
