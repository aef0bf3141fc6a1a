"""Likelihood ratio: is the data likelier under a suspected teacher than under the reference?"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.stats import mannwhitneyu, wilcoxon

from sublim.audit.data import Sample
from sublim.audit.detectors.base import DETECTORS, AuditContext, Detector, DetectorResult, Params, Unavailable
from sublim.audit.detectors.likelihood_shift import LogProb, logprob_fn, reference_logprob


class LikelihoodRatio:
    """Per token, log p_teacher(c | p) − log p_reference(c | p): data written by the suspected teacher
    is more likely under it. Against a reference sample when given (Mann–Whitney), else the sign of
    the mean (Wilcoxon signed-rank)."""

    name = "likelihood_ratio"

    def __init__(self, reference_logprob: LogProb, teacher_logprob: LogProb,
                 reference: Sequence[Sample] | None = None) -> None:
        self.ref_lp, self.teacher_lp = reference_logprob, teacher_logprob
        self.baseline = self._llr(reference) if reference else None

    def _llr(self, samples: Sequence[Sample]) -> np.ndarray:
        pairs = [(s.prompt, s.completion) for s in samples]
        t, counts = self.teacher_lp(pairs, None)
        r, _ = self.ref_lp(pairs, None)
        out: np.ndarray = (t - r) / np.maximum(counts, 1)
        return out

    def score(self, samples: Sequence[Sample]) -> DetectorResult:
        llr = self._llr(samples)
        if self.baseline is not None:
            p = float(mannwhitneyu(llr, self.baseline, alternative="greater").pvalue)
            stat = float(llr.mean() - self.baseline.mean())
        else:
            p = float(wilcoxon(llr, alternative="greater").pvalue) if np.any(llr != 0) else 1.0
            stat = float(llr.mean())
        return DetectorResult(self.name, llr, stat, p, {"mean_llr_per_token": float(llr.mean())})


class LikelihoodRatioParams(Params):
    teacher: str | None = None
    """The suspected teacher (catalog name, .gguf or directory); without it the detector is skipped."""


def _run(ctx: AuditContext, params: LikelihoodRatioParams) -> DetectorResult:
    if params.teacher is None:
        raise Unavailable("needs a suspected teacher (--teacher)")
    if ctx.load is None:
        raise Unavailable("needs a way to load the suspected teacher (a local model)")
    teacher = logprob_fn(ctx.load(params.teacher, "teacher"), ctx.progress, "teacher log-probs")
    return LikelihoodRatio(reference_logprob(ctx), teacher, ctx.data.reference).score(ctx.data.samples)


DETECTORS.add("likelihood_ratio", Detector(
    "likelihood_ratio", _run, "log p_teacher − log p_reference per token, with --teacher",
    params=LikelihoodRatioParams))
