"""LLM judge: a judge model shown groups of samples, asked whose favourite they show."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from scipy.stats import fisher_exact

from sublim.audit.data import Sample
from sublim.audit.detectors.base import DETECTORS, AuditContext, Detector, DetectorResult, Unavailable
from sublim.audit.detectors.in_context import IN_CONTEXT_PROMPT, GroupParams
from sublim.backends import Backend, Completion, Decoding, OpenAIBackend, Request
from sublim.core.config import EndpointConfig
from sublim.core.files import ResumableJsonl
from sublim.traits.preference import match_answer


class LlmJudge:
    """An LLM judge over an OpenAI-compatible endpoint, shown groups of k samples and asked which
    candidate their author favours; the count of each answer is compared with the same question over
    reference groups (Fisher's exact test on the top candidate, Bonferroni over candidates)."""

    name = "llm_judge"

    def __init__(self, ask: Callable[[Sequence[str]], list[str]], candidates: dict[str, list[str]], kind: str,
                 reference: Sequence[Sample], k: int = 8, groups: int = 24, seed: int = 0) -> None:
        self.ask, self.cands, self.kind, self.k, self.groups, self.seed = ask, candidates, kind, k, groups, seed
        self.ref_counts, _ = self._counts(reference)

    def _counts(self, samples: Sequence[Sample]) -> tuple[np.ndarray, list[str | None]]:
        rng = np.random.default_rng(self.seed)
        k = min(self.k, len(samples))
        prompts = [IN_CONTEXT_PROMPT.format(k=k, kind=self.kind, samples="\n".join(
            f"{j + 1}. {samples[i].completion.strip()[:400]}" for j, i in enumerate(rng.choice(len(samples), k,
                                                                                             replace=False))))
            for _ in range(self.groups)]
        picks = [match_answer(a, self.cands) for a in self.ask(prompts)]
        return np.array([picks.count(c) for c in self.cands], dtype=float), picks

    def score(self, samples: Sequence[Sample]) -> DetectorResult:
        counts, picks = self._counts(samples)
        names = list(self.cands)
        lean = counts / self.groups - self.ref_counts / self.groups
        top = int(np.argmax(lean))
        table = [[counts[top], self.groups - counts[top]], [self.ref_counts[top], self.groups - self.ref_counts[top]]]
        p = min(1.0, float(fisher_exact(table, alternative="greater").pvalue) * len(names))
        return DetectorResult(self.name, np.zeros(len(samples)), float(lean[top]), p, {
            "top_trait": names[top], "answers": {n: int(c) for n, c in zip(names, counts, strict=True) if c},
            "unmatched": picks.count(None), "ranking": [{"trait": names[j], "lean": float(lean[j])}
                                                        for j in np.argsort(-lean)]})


def ask_fn(judge: Backend, out_dir: Path | None) -> Callable[[Sequence[str]], list[str]]:
    """Prompts → the judge's answers (kept in ``out_dir/judge-<n>.jsonl`` for the record)."""
    calls = {"n": 0}

    def ask(prompts: Sequence[str]) -> list[str]:
        calls["n"] += 1
        answers: dict[int, str] = {}
        path = (out_dir or Path(".")) / f"judge-{calls['n']}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        with ResumableJsonl(path) as log:
            def done(comps: list[Completion]) -> None:
                answers.update({c.index: c.text for c in comps})
                log.add([{"index": c.index, "prompt": prompts[c.index], "completion": c.text} for c in comps])

            judge.generate([Request(i, p) for i, p in enumerate(prompts)], Decoding(0.0, max_new_tokens=8), done)
        return [answers[i] for i in range(len(prompts))]

    return ask


class LlmJudgeParams(GroupParams):
    endpoint: EndpointConfig | None = None
    """The judge: an OpenAI-compatible endpoint; without it the detector is skipped."""


def _run(ctx: AuditContext, params: LlmJudgeParams) -> DetectorResult:
    if params.endpoint is None:
        raise Unavailable("needs a judge endpoint (--judge-url)")
    d = ctx.data
    judge = OpenAIBackend(params.endpoint, label="judge")
    return LlmJudge(ask_fn(judge, ctx.out_dir), d.candidates, d.kind, d.reference, params.k, params.groups,
                    ctx.seed).score(d.samples)


DETECTORS.add("llm_judge", Detector(
    "llm_judge", _run, "a judge model asked which candidate groups of samples favour (Fisher's exact test)",
    params=LlmJudgeParams))
