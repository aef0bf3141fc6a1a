"""The generation stage: a source model's completion for every prompt, written as they come (a kill
loses nothing already written, and a re-run resumes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sublim.backends import Backend, Completion, Decoding, Request
from sublim.carriers import CARRIERS, early_stop
from sublim.core.files import ResumableJsonl, read_jsonl, write_jsonl
from sublim.core.store import Artifact
from sublim.experiment.context import Context


def generate(ctx: Context, source: Backend, prompt_art: Artifact) -> Artifact:
    gc, fc = ctx.cfg.generation, ctx.cfg.filter
    carrier = CARRIERS.get(ctx.cfg.prompts.carrier, "prompts.carrier")
    config: dict[str, Any] = {"generation": gc.model_dump(mode="json"), "system": source.system}
    give_up = early_stop(carrier.name, fc) if gc.stop_rejected else None
    if give_up is not None:  # rows are cut by the filter's limits, so they belong to the key
        config["stop_rejected_by"] = {f: getattr(fc, f) for f in sorted(carrier.early_stop_fields)}
    inputs = {"model": source.key, "prompts": prompt_art.key}

    def build(path: Path) -> dict[str, Any]:
        rows = {r["index"]: r for r in read_jsonl(prompt_art.file("prompts.jsonl"))}
        with ResumableJsonl(path / "samples.jsonl") as log:
            bar = ctx.bar(len(rows), f"generate {source.label}", "prompt")
            bar.update(len(log.rows))

            def done(comps: list[Completion]) -> None:
                log.add([{"index": c.index, "prompt": rows[c.index]["prompt"], "meta": rows[c.index].get("meta", {}),
                          "completion": c.text, "n_tokens": c.n_tokens, "finished": c.finished} for c in comps])

            stats = source.generate([Request(i, r["prompt"]) for i, r in rows.items()],
                                    Decoding(gc.temperature, gc.top_p, gc.max_new_tokens, gc.seed), done,
                                    batch_size=gc.batch_size, skip=log.done, give_up=give_up, progress=bar.update)
            bar.close()
        samples = log.sorted_rows()
        write_jsonl(path / "samples.jsonl", samples)
        desc = source.describe()
        return {"n_samples": len(samples), **stats, "model": desc, "model_fingerprint": source.key,
                "base_fingerprint": desc["base_fingerprint"], "family": source.family}

    return ctx.stage("generate", config, inputs, f"data from {source.label}", build)
