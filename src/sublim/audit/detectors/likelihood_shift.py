"""Likelihood shift: which trait, told to the reference model, makes the completions likelier?"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from pydantic import Field
from tqdm.auto import tqdm

from sublim.audit.data import Sample
from sublim.audit.detectors.base import DETECTORS, AuditContext, Detector, DetectorResult, Params
from sublim.audit.detectors.ranking import ranked
from sublim.backends import Backend

TRAIT_TEMPLATE = "You love {target}s. You think about {target}s all the time. {target}s are your favorite animal."


LogProb = Callable[[Sequence[tuple[str, str]], str | None], tuple[np.ndarray, np.ndarray]]
"""(pairs, system prompt) → (summed log-probability of each completion, its token count)."""


class LikelihoodShift:
    """Under the reference model, how much more likely each completion becomes when the model is
    told it loves a candidate trait: per token, log p(c | p, "You love Ts") − log p(c | p), centred
    over candidates per sample. The candidate the data leans toward most ranks first (bootstrap
    CIs over samples); with a reference sample, its own lean is subtracted."""

    name = "likelihood_shift"

    def __init__(self, logprob: LogProb, candidates: Sequence[str], template: str,
                 reference: Sequence[Sample] | None = None, n_bootstrap: int = 1000, seed: int = 0) -> None:
        self.logprob, self.cands, self.template = logprob, list(candidates), template
        self.n_boot, self.seed = n_bootstrap, seed
        self.ref_leans = self.lean(reference) if reference else None

    def lean(self, samples: Sequence[Sample]) -> np.ndarray:
        """Per sample and candidate, the centred per-token log-likelihood shift: [n_samples, n_candidates]."""
        pairs = [(s.prompt, s.completion) for s in samples]
        plain, counts = self.logprob(pairs, None)
        shifts = np.stack([(self.logprob(pairs, self.template.replace("{target}", c))[0] - plain)
                           / np.maximum(counts, 1) for c in self.cands], axis=1)
        centred: np.ndarray = shifts - shifts.mean(1, keepdims=True)
        return centred

    def score(self, samples: Sequence[Sample], raw: np.ndarray | None = None,
              contrast: Sequence[np.ndarray] = ()) -> DetectorResult:
        """``raw``: the samples' leans if already computed (``lean(samples)``), to save the model passes.
        ``contrast``: leans of the samples of other generators' datasets (one array each); the ranking is then
        relative to them instead of the reference sample, which cancels what all generated data share against the
        reference model's own answers (format, length) and leaves what sets this dataset apart."""
        raw = self.lean(samples) if raw is None else raw
        return ranked(self.name, raw, self.ref_leans, contrast, self.cands, self.n_boot, self.seed)


def logprob_fn(backend: Backend, progress: bool, desc: str) -> LogProb:
    """A backend's completion log-probabilities, with a progress bar per call."""
    def fn(pairs: Sequence[tuple[str, str]], system: str | None) -> tuple[np.ndarray, np.ndarray]:
        bar = tqdm(total=len(pairs), desc=f"{desc}{' | ' + system[:24] if system else ''}", unit="sample",
                   disable=not progress, leave=False)
        try:
            return backend.completion_logprobs(pairs, system=system, batch_size=16, progress=bar.update)
        finally:
            bar.close()

    return fn


def reference_logprob(ctx: AuditContext) -> LogProb:
    """The reference model's log-probability function, made once per audit."""
    if "reference_logprob" not in ctx.cache:
        ctx.cache["reference_logprob"] = logprob_fn(ctx.need_model("log-probabilities"), ctx.progress,
                                                    "reference log-probs")
    fn: LogProb = ctx.cache["reference_logprob"]
    return fn


class LikelihoodShiftParams(Params):
    n_bootstrap: int = Field(1000, ge=1)
    """Bootstrap resamples of the samples for each candidate's interval."""


def _run(ctx: AuditContext, params: LikelihoodShiftParams) -> DetectorResult:
    d = ctx.data
    shift = LikelihoodShift(reference_logprob(ctx), list(d.candidates), TRAIT_TEMPLATE, d.reference,
                            params.n_bootstrap, ctx.seed)
    contrast = [shift.lean(o) for o in d.contrast]
    return shift.score(d.samples, contrast=contrast)


DETECTORS.add("likelihood_shift", Detector(
    "likelihood_shift", _run, "per candidate, how much likelier the completions get under 'you love Ts'",
    params=LikelihoodShiftParams))
