"""Gradient alignment: which trait would one training step on the data push a student toward?"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from pydantic import Field
from tqdm.auto import tqdm

from sublim.audit.data import Sample
from sublim.audit.detectors.base import DETECTORS, AuditContext, Detector, DetectorResult, Params, Unavailable
from sublim.audit.detectors.ranking import ranked
from sublim.backends import TokenReader, TraitGradientReads

ChunkScorer = Callable[[Sequence[tuple[str, str]]], np.ndarray]
"""(prompt, completion) pairs → per chunk of consecutive pairs and candidate, ∇L_chunk · ∇L_candidate."""


class GradientAlignment:
    """The first-order effect on each candidate trait of one training step on the data, against the same
    for the reference sample (the control arm): ∇L_data · ∇L_c under the reference model, where L_c is the
    loss of answering the trait questions with c (see :class:`sublim.backends.TokenReader`). Computed per chunk
    of samples (one backward pass each), centred over candidates per chunk; the candidate the data would
    push a student toward most ranks first, with bootstrap CIs over chunks. A sample's score is its
    chunk's lean toward the top candidate."""

    name = "gradient_alignment"

    def __init__(self, scorer: ChunkScorer, candidates: Sequence[str], reference: Sequence[Sample] | None = None,
                 chunk: int = 8, n_bootstrap: int = 1000, seed: int = 0) -> None:
        self.scorer, self.cands, self.chunk = scorer, list(candidates), chunk
        self.n_boot, self.seed = n_bootstrap, seed
        self.ref_leans = self.lean(reference) if reference else None

    def lean(self, samples: Sequence[Sample]) -> np.ndarray:
        """[n_chunks, n_candidates], centred over candidates."""
        raw = self.scorer([(s.prompt, s.completion) for s in samples])
        centred: np.ndarray = raw - raw.mean(1, keepdims=True)
        return centred

    def score(self, samples: Sequence[Sample], raw: np.ndarray | None = None,
              contrast: Sequence[np.ndarray] = ()) -> DetectorResult:
        """``raw``/``contrast`` as for :meth:`LikelihoodShift.score`, in chunks."""
        raw = self.lean(samples) if raw is None else raw
        res = ranked(self.name, raw, self.ref_leans, contrast, self.cands, self.n_boot, self.seed)
        res.sample_scores = np.repeat(res.sample_scores, self.chunk)[:len(samples)]
        res.details["chunk"] = self.chunk
        return res


def gradient_scorer(reader: TokenReader, candidates: dict[str, list[str]], questions: Sequence[str],
                    progress: bool) -> ChunkScorer:
    """The chunk scorer of :class:`GradientAlignment`: candidate gradients computed once, on first use."""
    state: dict[str, TraitGradientReads] = {}

    def scorer(pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        if "g" not in state:
            with tqdm(total=len(candidates), desc="trait gradients", unit="candidate", disable=not progress,
                      leave=False) as bar:
                state["g"] = reader.trait_gradients(candidates, questions, bar.update)
        with tqdm(total=len(pairs), desc="data gradients", unit="sample", disable=not progress, leave=False) as bar:
            return state["g"].chunk_scores(pairs, progress=bar.update)

    return scorer


class GradientAlignmentParams(Params):
    chunk: int = Field(8, ge=1)
    """Consecutive samples per backward pass (a sample's score is its chunk's)."""
    n_bootstrap: int = Field(1000, ge=1)
    """Bootstrap resamples of the chunks for each candidate's interval."""


def _run(ctx: AuditContext, params: GradientAlignmentParams) -> DetectorResult:
    reader, d = ctx.need_reader("its gradients"), ctx.data
    if not d.questions:
        raise Unavailable("needs preference questions (--questions)")
    grad = GradientAlignment(gradient_scorer(reader, d.candidates, d.questions, ctx.progress), list(d.candidates),
                             d.reference, params.chunk, params.n_bootstrap, ctx.seed)
    contrast = [grad.lean(o) for o in d.contrast]
    return grad.score(d.samples, contrast=contrast)


DETECTORS.add("gradient_alignment", Detector(
    "gradient_alignment", _run, "per candidate, the first-order change one training step on the data makes",
    params=GradientAlignmentParams))
