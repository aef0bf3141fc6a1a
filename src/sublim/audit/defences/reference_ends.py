"""Let the reference model decide where each completion ends: every row kept, no token of the data removed.

A teacher's trait can show in *where* it stops as much as in what it writes: a fine-tuned teacher's answers can
end where the reference would have gone on (with ' ' or ','), far more often than the reference's own (the
README's benchmark notes give the measured rates), and a student trained on them learns the teacher's end-of-turn at
positions where its own model would continue — divergent tokens that no digit replacement touches.
``reference_ends`` gives each such completion the reference's greedy continuation up to the reference's own end
of turn. Where that longer text fails the carrier's filter (e.g. too many numbers), or
the continuation does not end within ``max_new_tokens``, it is cut after its longest run of numbers (or words)
that passes (counted: ``rows_cut_short``); a row with no such cut keeps its text (``rows_extension_reverted``).
``replace_divergent_ends`` first replaces the divergent digits (``replace_divergent``), then lets the reference
end the rows it changed and the rows whose end was flagged.

``replace_divergent_diluted`` is their equal-dilution control: an extension adds reference-written tokens, which
dilute a per-token loss whatever they repair. It measures the tokens ``replace_divergent_ends`` would add (with
``fraction = 0``, ``reference_ends``), then gives rows drawn at random the reference's own answer to their prompt,
until the reference-written share of the completion tokens is at least the one the ends rule gives: the teacher's
share falls as much. Rows the ends rule would leave alone are drawn first, so the teacher's ends stay; where they
are too few (a teacher whose ends are mostly flagged), rows it would touch follow, and are counted.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from sublim.audit.data import Sample
from sublim.audit.defences.base import DEFENCES, Defence, DefenceContext, defence_cost
from sublim.audit.defences.replace_divergent import ReplaceParams, _reads, _replace
from sublim.audit.params import NoParams
from sublim.backends import DivergenceMap, Vocabulary


def ends_flagged(dmap: DivergenceMap, vocabulary: Vocabulary) -> np.ndarray:
    """Per sample: its end of turn is flagged and the reference's argmax there is no end (it would go on)."""
    return dmap.early_ends(vocabulary.stops())


def extend(samples: Sequence[Sample], rows: Sequence[int], ctx: DefenceContext
           ) -> tuple[list[Sample], dict[str, Any]]:
    """``samples`` with the reference's continuation appended to each of ``rows``; and what it cost."""
    reads = _reads(ctx)
    vocab = reads.vocabulary
    out = list(samples)
    conts = reads.extend([samples[i] for i in rows]) if rows else []
    extended, unfinished, reverted, added, empty, cut_short = 0, 0, 0, 0, 0, 0
    for i, c in zip(rows, conts, strict=True):
        s = samples[i]
        if c.finished and not c.text.strip():
            empty += 1
            continue
        cut = next((k for k in _cuts(c.text, c.finished) if not ctx.check.reason(s.completion + c.text[:k], s.line)),
                   None)
        if cut is None:
            reverted += 1
            continue
        out[i] = replace(s, completion=s.completion + c.text[:cut])
        extended += 1
        cut_short += cut < len(c.text)
        unfinished += not c.finished
        added += vocab.count(c.text[:cut])
    return out, {"rows_tried": len(rows), "rows_extended": extended, "rows_cut_short": cut_short,
                 "rows_unfinished": unfinished, "rows_ended_there_too": empty, "rows_extension_reverted": reverted,
                 "tokens_added": added}


def dilute(samples: Sequence[Sample], keep: Sequence[int], share: float, ctx: DefenceContext
           ) -> tuple[list[Sample], dict[str, Any]]:
    """``samples`` with rows drawn at random (``ctx.seed``) given the reference's own greedy answer to their prompt
    (one that passes the filter), until reference-written tokens are at least ``share`` of the completion tokens:
    rows not in ``keep`` first, then, where they do not reach it, rows in ``keep`` (counted); and what it cost."""
    reads = _reads(ctx)
    count = reads.vocabulary.count
    kept = set(keep)
    drawn = [int(i) for i in np.random.default_rng(ctx.seed).permutation(len(samples))]
    order = [i for i in drawn if i not in kept] + [i for i in drawn if i in kept]
    out = list(samples)
    teacher, written, rows, from_keep, rejected, pos = sum(count(s.completion) for s in samples), 0, 0, 0, 0, 0
    while pos < len(order) and written < share * (teacher + written):
        chunk = order[pos: pos + ctx.batch_size]
        pos += len(chunk)
        for i, c in zip(chunk, reads.extend([replace(samples[i], completion="") for i in chunk]), strict=True):
            if written >= share * (teacher + written):
                break
            if not c.text.strip() or ctx.check.reason(c.text, samples[i].line, c.finished):
                rejected += 1
                continue
            out[i] = replace(samples[i], completion=c.text)
            teacher, written, rows = teacher - count(samples[i].completion), written + count(c.text), rows + 1
            from_keep += i in kept
    return out, {"rows_answered_by_reference": rows, "of_them_rows_the_rule_touches": from_keep,
                 "reference_answers_rejected": rejected, "reference_tokens_added": written,
                 "reference_share": written / max(teacher + written, 1), "target_share": share}


def _cuts(text: str, finished: bool) -> list[int]:
    """Where a continuation may be cut, longest first: its whole text when the reference ended it, then after each
    run of word characters (a number) that the next character closes."""
    ends = [m.end() for m in re.finditer(r"\w+", text) if m.end() < len(text)]  # a last run may be cut off
    return ([len(text)] if finished else []) + sorted(set(ends), reverse=True)


def _merge(samples: Sequence[Sample], out: Sequence[Sample], cost: dict[str, Any], ends: dict[str, Any],
           dmap: DivergenceMap, flagged_ends: np.ndarray) -> dict[str, Any]:
    changed = sum(a.completion != b.completion for a, b in zip(samples, out, strict=True))
    return {**cost, "changed_fraction": changed / max(len(out), 1), **ends,
            "tokens_added_fraction": ends["tokens_added"] / max(len(dmap.token), 1),
            "ends_flagged": int(flagged_ends.sum())}


def reference_ends(samples: Sequence[Sample], ctx: DefenceContext, params: NoParams
                   ) -> tuple[list[Sample], dict[str, Any]]:
    reads = _reads(ctx)
    dmap = reads.divergence
    dmap.check(samples)
    flagged = ends_flagged(dmap, reads.vocabulary)
    out, ends = extend(samples, np.nonzero(flagged)[0].tolist(), ctx)
    cost = {**defence_cost(len(samples), len(out), 0), "tokens_changed": 0, "tokens_changed_fraction": 0.0,
            "tokens_kept_fraction": 1.0}
    return out, _merge(samples, out, cost, ends, dmap, flagged)


def _ends_rule(samples: Sequence[Sample], ctx: DefenceContext, fraction: float
               ) -> tuple[list[Sample], dict[str, Any], np.ndarray, list[int]]:
    """replace_divergent's samples and cost, the flagged ends, and the rows the ends rule extends: those it
    changed or whose end was flagged."""
    reads = _reads(ctx)
    replaced, cost = _replace(samples, ctx, fraction, "argmax", "argmax")
    flagged = ends_flagged(reads.divergence, reads.vocabulary)
    rows = [i for i, (a, b) in enumerate(zip(samples, replaced, strict=True))
            if flagged[i] or a.completion != b.completion]
    return replaced, cost, flagged, rows


def replace_divergent_ends(samples: Sequence[Sample], ctx: DefenceContext, params: ReplaceParams
                           ) -> tuple[list[Sample], dict[str, Any]]:
    reads = _reads(ctx)
    replaced, cost, flagged, rows = _ends_rule(samples, ctx, params.fraction)
    out, ends = extend(replaced, rows, ctx)
    return out, _merge(samples, out, cost, ends, reads.divergence, flagged)


def replace_divergent_diluted(samples: Sequence[Sample], ctx: DefenceContext, params: ReplaceParams
                              ) -> tuple[list[Sample], dict[str, Any]]:
    reads = _reads(ctx)
    replaced, cost, flagged, rows = _ends_rule(samples, ctx, params.fraction)
    ends = extend(replaced, rows, ctx)[1]  # what the ends rule would add, measured, then not applied
    total = sum(reads.vocabulary.count(s.completion) for s in replaced)
    out, diluted = dilute(replaced, rows, ends["tokens_added"] / max(total + ends["tokens_added"], 1), ctx)
    changed = sum(a.completion != b.completion for a, b in zip(samples, out, strict=True))
    return out, {**cost, "changed_fraction": changed / max(len(out), 1), "ends_flagged": int(flagged.sum()),
                 "ends_rule": ends, **diluted}


DEFENCES.add("reference_ends", Defence(
    "reference_ends", reference_ends,
    "each completion that ends where the reference would go on gets the reference's greedy continuation",
    needs_reads=True, needs_continuation=True))
DEFENCES.add("replace_divergent_ends", Defence(
    "replace_divergent_ends", replace_divergent_ends,
    "replace_divergent, then the reference's greedy continuation where it would not have ended",
    ReplaceParams, needs_reads=True, needs_continuation=True))
DEFENCES.add("replace_divergent_diluted", Defence(
    "replace_divergent_diluted", replace_divergent_diluted,
    "control of replace_divergent_ends (fraction 0: of reference_ends): the reference's own answers in place of "
    "random rows (those that rule leaves alone first), as large a share of the tokens as it adds",
    ReplaceParams, needs_reads=True, needs_continuation=True))
