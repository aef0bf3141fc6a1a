"""Drop the samples a detector scores most suspect."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from sublim.audit.data import Sample
from sublim.audit.defences.base import DEFENCES, Defence, DefenceInputs, defence_cost
from sublim.core.errors import SublimError


def drop_top(samples: Sequence[Sample], inputs: DefenceInputs) -> tuple[list[Sample], dict[str, Any]]:
    scores = inputs.scores
    if scores is None or len(scores) != len(samples):
        raise SublimError("defence drop_top needs one detector score per sample (run an audit first)")
    k = int(round(inputs.fraction * len(samples)))
    drop = set(np.argsort(-np.asarray(scores))[:k].tolist())
    kept = [s for i, s in enumerate(samples) if i not in drop]
    return kept, defence_cost(len(samples), len(kept), 0)


DEFENCES.add("drop_top", Defence("drop_top", drop_top, needs=frozenset({"scores"}), reads=frozenset({"fraction"}),
                                 description="drop the fraction of samples a detector scores highest"))
