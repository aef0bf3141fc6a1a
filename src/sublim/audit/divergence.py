"""The divergence map and flagged reads, by their audit names. Token reads are a backend capability
(:class:`sublim.backends.TokenReader`, what they return in :mod:`sublim.backends.reads`); the audit keeps the
statistics over what they return (:mod:`sublim.audit.detectors.divergence_shift`, the replace_* defences)."""

from sublim.backends.reads import PLACEMENTS, DivergenceMap, FlaggedLogprobs, induced

__all__ = ["PLACEMENTS", "DivergenceMap", "FlaggedLogprobs", "induced"]
