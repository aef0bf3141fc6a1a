"""What token reads return: the divergence map of a dataset under a reference model and its flagged tokens'
log-probabilities under inductions or other models (numpy arrays; the statistics over them are the audit's). The
reads themselves are a backend capability: :class:`sublim.backends.base.TokenReader`.

Under greedy decoding a dataset's token at each position *is* its generator's argmax, so where the reference
model's argmax differs the generator diverged from the reference — without access to the generator. Those
positions carry most of what a student sharing the reference's initialization picks up (Schrodi et al. 2025,
arXiv 2509.23886).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np

from sublim.core.errors import SublimError

PLACEMENTS = ("prompt", "system")
"""Where an induction goes: after the user's prompt (its encoding shared by every induction of a sample) or
as the system prompt (faithful to a system-prompted teacher; nothing after the template head is shared)."""


def induced(prompt: str, text: str, placement: str) -> tuple[str, str | None]:
    """(user message, system prompt) of ``prompt`` under the induction ``text``."""
    if placement == "prompt":
        return f"{prompt}\n\n{text}", None
    if placement == "system":
        return prompt, text
    raise SublimError(f"induction placement {placement!r} unknown: use one of {', '.join(PLACEMENTS)}")


class Text(Protocol):
    """A sample to read: its line in its file, the user's prompt and the completion."""

    @property
    def line(self) -> int: ...

    @property
    def prompt(self) -> str: ...

    @property
    def completion(self) -> str: ...


@dataclass
class DivergenceMap:
    """Per completion token of every sample (flat arrays; sample i owns ``offsets[i]:offsets[i + 1]``): the data
    teacher-forced under the reference model with the encoding a student trains on (chat template, the completion
    and its end-of-turn marker)."""

    lines: np.ndarray
    """The samples' line numbers in their file."""
    offsets: np.ndarray
    token: np.ndarray
    """The data's token."""
    argmax: np.ndarray
    """The reference model's most likely token there."""
    logp: np.ndarray
    """log p_ref(data token)."""
    top_logp: np.ndarray
    """log p_ref(argmax)."""

    @property
    def flagged(self) -> np.ndarray:
        """Where the data's token is not the reference's argmax."""
        out: np.ndarray = self.token != self.argmax
        return out

    @property
    def gap(self) -> np.ndarray:
        """How far below the reference's argmax the data's token is, in nats (0 where they agree)."""
        out: np.ndarray = self.top_logp - self.logp
        return out

    def span(self, i: int) -> slice:
        return slice(int(self.offsets[i]), int(self.offsets[i + 1]))

    def rate(self) -> np.ndarray:
        """Per sample, the share of its completion tokens that are flagged."""
        counts = np.diff(self.offsets)
        flagged = np.add.reduceat(self.flagged.astype(np.int64), self.offsets[:-1]) if len(self.token) else counts
        out: np.ndarray = np.where(counts > 0, flagged / np.maximum(counts, 1), 0.0)
        return out

    def early_ends(self, stop: Sequence[int]) -> np.ndarray:
        """Per sample: its end of turn (the first of the ``stop`` tokens) is flagged and the reference's argmax there
        is no end — the data stopped where the reference would have gone on."""
        out = np.zeros(len(self.lines), dtype=bool)
        for i in range(len(self.lines)):
            span = self.span(i)
            at = np.nonzero(np.isin(self.token[span], stop))[0]
            if len(at):
                out[i] = not np.isin(self.argmax[span][at[0]], stop)
        return out

    def summary(self) -> dict[str, Any]:
        rate = self.rate()
        return {"n_samples": len(self.lines), "n_tokens": len(self.token), "n_flagged": int(self.flagged.sum()),
                "flagged_fraction": float(self.flagged.mean()) if len(self.token) else 0.0,
                "mean_sample_rate": float(rate.mean()) if len(rate) else 0.0,
                "samples_with_a_flag": float((rate > 0).mean()) if len(rate) else 0.0}

    def save(self, path: Path) -> None:
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez_compressed(tmp, lines=self.lines, offsets=self.offsets, token=self.token, argmax=self.argmax,
                            logp=self.logp, top_logp=self.top_logp)
        tmp.replace(path)

    def check(self, samples: Sequence[Text]) -> None:
        """Refuse samples the map was not built from."""
        if len(samples) != len(self.lines) or any(s.line != ln for s, ln in zip(samples, self.lines, strict=True)):
            raise SublimError("the divergence map belongs to other samples: build it from this dataset")

    @classmethod
    def load(cls, path: Path) -> DivergenceMap:
        with np.load(path) as z:
            return cls(*(z[k] for k in ("lines", "offsets", "token", "argmax", "logp", "top_logp")))


@dataclass
class FlaggedLogprobs:
    """Per sample (rows) and column (an induction or a whole model), means over the sample's flagged tokens (NaN:
    none flagged)."""

    data: np.ndarray
    """log p(the data's token | column)."""
    alternatives: np.ndarray
    """The mean log p of the position's alternatives: the first column's top tokens there other than the data's
    token and its own argmax. A column that only flattens or sharpens the distribution moves these as much as
    the data's token; one that prefers what the data's generator chose moves the data's token more."""
    alternatives_same_class: np.ndarray
    """The same with a digit's alternatives restricted to other digits (a column's taste for digits over
    commas cancels too, and with it any signal in whether the generator wrote a digit at all)."""
    counts: np.ndarray
    """Flagged tokens per sample."""
    agreement: np.ndarray | None = None
    """The share of the sample's flagged tokens that are the column's own argmax: it reproduces the generator's
    greedy choice there."""

    FIELDS: ClassVar[tuple[str, ...]] = ("data", "alternatives", "alternatives_same_class", "counts", "agreement")

    def save(self, path: Path) -> None:
        tmp = path.with_name(path.name + ".tmp.npz")
        arrays: dict[str, Any] = {f: getattr(self, f) for f in self.FIELDS if getattr(self, f) is not None}
        np.savez_compressed(tmp, **arrays)
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> FlaggedLogprobs:
        with np.load(path) as z:
            return cls(z["data"], z["alternatives"], z["alternatives_same_class"], z["counts"],
                       z["agreement"] if "agreement" in z.files else None)
