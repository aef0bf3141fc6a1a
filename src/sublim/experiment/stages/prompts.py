"""The prompts stage: the carrier's prompts for the config (the same config, the same prompts)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sublim.carriers import CARRIERS
from sublim.core.config import PromptsConfig
from sublim.core.files import write_jsonl
from sublim.core.store import Artifact
from sublim.experiment.context import Context


def config_slice(pc: PromptsConfig) -> dict[str, Any]:
    """The settings that change the prompts: the carrier's own, not another carrier's."""
    fields = {"carrier", "n", "seed", *CARRIERS.get(pc.carrier, "prompts.carrier").prompt_fields}
    out: dict[str, Any] = pc.model_dump(mode="json", include=fields)
    return out


def prompts(ctx: Context, label: str | None = None) -> Artifact:
    pc = ctx.cfg.prompts
    carrier = CARRIERS.get(pc.carrier, "prompts.carrier")

    def build(path: Path) -> dict[str, Any]:
        write_jsonl(path / "prompts.jsonl", [{"index": p.index, "prompt": p.text, "meta": p.meta}
                                             for p in carrier.prompts(pc)])
        return {}

    return ctx.stage("prompts", config_slice(pc), {}, label or f"{pc.n} {pc.carrier} prompts", build)
