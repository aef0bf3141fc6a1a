"""Faults ``sublim serve`` injects for testing clients (ours or anyone's): 429 with Retry-After, 500 before or
after the work, answers slower than a client's timeout, malformed JSON bodies; drawn per request at given rates."""

from __future__ import annotations

import random
import threading
from collections import Counter
from dataclasses import dataclass, field

from sublim.core.errors import SublimError
from sublim.serve.paths import CHAT

FAULT_KINDS = ("429", "500", "500_after", "slow", "malformed")
"""429 with Retry-After and 500 before any work; 500_after: the work is done, then the answer is a 500 (did it
happen? the worst case for a client); slow: an answer later than a client's timeout; malformed: a broken body."""


@dataclass
class FaultPlan:
    """Rates (0–1) of injected faults per request to ``routes``, drawn from a seeded generator."""

    rates: dict[str, float] = field(default_factory=dict)
    seed: int = 0
    slow_s: float = 5.0
    counts: Counter[str] = field(default_factory=Counter)
    routes: tuple[str, ...] = (CHAT,)
    """The POST routes faults are injected into (chat completions by default; legacy completions and fine-tuning
    job creation too, if named)."""

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._lock = threading.Lock()

    @classmethod
    def parse(cls, text: str, seed: int = 0, slow_s: float = 5.0, routes: tuple[str, ...] = (CHAT,)) -> FaultPlan:
        """``"429=0.1,500=0.05,slow=0.05,malformed=0.05"`` → a plan."""
        rates: dict[str, float] = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            kind, _, value = part.partition("=")
            try:
                rate = float(value)
            except ValueError:
                rate = -1.0
            if kind not in FAULT_KINDS or not 0 <= rate <= 1:
                raise SublimError(f"bad fault {part!r}: write KIND=RATE with KIND in "
                                  f"{', '.join(FAULT_KINDS)} and RATE in 0..1, comma-separated")
            rates[kind] = rate
        if sum(rates.values()) > 1:
            raise SublimError(f"fault rates {text!r} add up to more than 1")
        return cls(rates, seed, slow_s, routes=routes)

    def draw(self, route: str = CHAT) -> str | None:
        """The fault to inject into this request to ``route`` (None: answer it properly)."""
        if route not in self.routes:
            return None
        with self._lock:
            u = self._rng.random()
            acc = 0.0
            for kind in FAULT_KINDS:
                acc += self.rates.get(kind, 0.0)
                if u < acc:
                    self.counts[kind] += 1
                    return kind
            self.counts["ok"] += 1
            return None
