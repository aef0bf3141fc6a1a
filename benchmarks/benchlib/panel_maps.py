"""The audit panel's committed datasets with the divergence maps carried beside them, as the panel's audits take
them (the first 1,000 samples of each): what the read counts (read_padding, proxy_read_sharing) plan over."""

from __future__ import annotations

import json
from pathlib import Path

from sublim.audit.data import Sample, load_samples
from sublim.audit.detectors.divergence_shift import samples_digest
from sublim.audit.run import subsample
from sublim.backends.reads import DivergenceMap

DATA = Path(__file__).resolve().parents[1] / "data" / "audit-panel"


def carried_panel() -> list[tuple[str, list[Sample], DivergenceMap]]:
    """(name, samples, map) of every panel dataset whose map has been carried, in file-name order."""
    maps = {json.loads((p / "manifest.json").read_text())["config"]["samples"]: p / "map.npz"
            for p in sorted((DATA / "store").glob("divergence-*"))}
    out = []
    for path in sorted(DATA.glob("*.jsonl")):
        samples = subsample(load_samples(path)[0], 1000, 0)
        digest = samples_digest(samples)
        if digest in maps:
            out.append((path.stem, samples, DivergenceMap.load(maps[digest])))
    return out
