"""The numbers in a completion, as counts over 0–999 (and one bucket for anything larger)."""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from sublim.audit.data import Sample

N_VALUES = 1001  # 0..999 and one bucket for anything larger
_NUM = re.compile(r"\d+")


def numbers_of(text: str) -> list[int]:
    """The numbers of a text, 1000 and above in one bucket (a digit run of any length: never converted whole)."""
    return [N_VALUES - 1 if len(m) > 4 else min(int(m), N_VALUES - 1) for m in _NUM.findall(text)]


def number_counts(samples: Sequence[Sample]) -> np.ndarray:
    """[n_samples, N_VALUES]: how often each value occurs in each completion."""
    out = np.zeros((len(samples), N_VALUES))
    for i, s in enumerate(samples):
        for v in numbers_of(s.completion):
            out[i, v] += 1
    return out
