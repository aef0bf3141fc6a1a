"""Drop the samples a detector scores most suspect."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from pydantic import Field

from sublim.audit.data import Sample
from sublim.audit.defences.base import DEFENCES, Defence, DefenceContext, defence_cost
from sublim.audit.params import Params
from sublim.core.errors import SublimError


class DropTopParams(Params):
    fraction: float = Field(0.1, ge=0, lt=1)
    """The share of the samples dropped."""


def drop_top(samples: Sequence[Sample], ctx: DefenceContext, params: DropTopParams
             ) -> tuple[list[Sample], dict[str, Any]]:
    scores = ctx.scores
    if scores is None or len(scores) != len(samples):
        raise SublimError("defence drop_top needs one detector score per sample (run an audit first)")
    k = int(round(params.fraction * len(samples)))
    drop = set(np.argsort(-np.asarray(scores))[:k].tolist())
    kept = [s for i, s in enumerate(samples) if i not in drop]
    return kept, defence_cost(len(samples), len(kept), 0)


DEFENCES.add("drop_top", Defence("drop_top", drop_top, "drop the fraction of samples a detector scores highest",
                                 DropTopParams, needs_scores=True))
