"""A process-wide tally of model work: tokens, seconds and FLOPs per kind (prefill, decode, training).

The local backend and the training loop add to it; a benchmark reads it into its results file, next to
the matmul peak it measured, so every figure of speed says how far it is from what the machine can do.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

KINDS = ("prefill", "decode", "training")


@dataclass
class _Tally:
    tokens: int = 0
    seconds: float = 0.0
    flops: float = 0.0


@dataclass
class Meter:
    tallies: dict[str, _Tally] = field(default_factory=lambda: {k: _Tally() for k in KINDS})

    def add(self, kind: str, tokens: int, seconds: float, flops: float) -> None:
        t = self.tallies.setdefault(kind, _Tally())
        t.tokens += int(tokens)
        t.seconds += float(seconds)
        t.flops += float(flops)

    def snapshot(self) -> dict[str, tuple[int, float, float]]:
        return {k: (t.tokens, t.seconds, t.flops) for k, t in self.tallies.items()}

    def since(self, before: dict[str, tuple[int, float, float]]) -> dict[str, dict[str, float]]:
        """The work added since ``before`` (a :meth:`snapshot`), per kind that did any: what a manifest records."""
        out = {}
        for kind, t in self.tallies.items():
            tok, sec, fl = before.get(kind, (0, 0.0, 0.0))
            if t.seconds > sec:
                out[kind] = {"tokens": t.tokens - tok, "seconds": round(t.seconds - sec, 3), "flops": t.flops - fl}
        return out

    def add_work(self, work: dict[str, dict[str, float]]) -> None:
        """Add work recorded elsewhere (another process's manifests)."""
        for kind, w in work.items():
            self.add(kind, int(w["tokens"]), float(w["seconds"]), float(w["flops"]))

    def reset(self) -> None:
        self.tallies = {k: _Tally() for k in KINDS}

    def figures(self, peak_flops: float | None) -> dict[str, Any]:
        """Per kind: tokens, seconds, tokens/s, achieved FLOP/s and its fraction of ``peak_flops``."""
        out: dict[str, Any] = {}
        for kind, t in self.tallies.items():
            rate = t.flops / t.seconds if t.seconds > 0 else None
            out[kind] = {"tokens": t.tokens, "seconds": round(t.seconds, 3),
                         "tokens_per_s": round(t.tokens / t.seconds, 1) if t.seconds > 0 else None,
                         "flops_per_s": round(rate) if rate is not None else None,
                         "fraction_of_peak": round(rate / peak_flops, 4) if rate is not None and peak_flops else None}
        return out


METER = Meter()
"""The one meter of this process."""
