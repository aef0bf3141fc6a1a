"""The generation stage: a source model's completion for every prompt, written as they come (a kill
loses nothing already written, and a re-run resumes)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from sublim.backends import Backend, Completion, Decoding, Request
from sublim.carriers import CARRIERS, check_completion, early_stop
from sublim.core.files import ResumableJsonl, read_jsonl, write_jsonl
from sublim.core.seeds import derive_seed
from sublim.core.store import Artifact
from sublim.experiment.context import Context, precision_slice
from sublim.experiment.stages.filter import config_slice as filter_slice

ROUND_BATCHES = 2
"""With generation.until_kept, prompts are generated in rounds of this many batches (the last one smaller)."""


def generate(ctx: Context, source: Backend, prompt_art: Artifact, banned_words: list[str] | None = None,
             label: str | None = None) -> Artifact:
    gc, fc = ctx.cfg.generation, ctx.cfg.filter
    carrier = CARRIERS.get(ctx.cfg.prompts.carrier, "prompts.carrier")
    config: dict[str, Any] = {"generation": gc.model_dump(mode="json"), "system": source.system,
                              **precision_slice(source)}
    give_up = early_stop(carrier.name, fc) if gc.stop_rejected else None
    if give_up is not None:  # rows are cut by the filter's limits, so they belong to the key
        config["stop_rejected_by"] = {f: getattr(fc, f) for f in sorted(carrier.early_stop_fields)}
    banned = sorted(set(banned_words or []) | {w.lower() for w in fc.banned_words})
    if gc.until_kept:  # when to stop depends on what the filter keeps
        config["kept_by"] = {k: v for k, v in filter_slice(fc, carrier.name, banned, "").items() if k != "judge"}
    inputs = {"model": source.key, "prompts": prompt_art.key}

    def build(path: Path) -> dict[str, Any]:
        rows = {r["index"]: r for r in read_jsonl(prompt_art.file("prompts.jsonl"))}
        with ResumableJsonl(path / "samples.jsonl") as log:
            bar = ctx.bar(len(rows), f"generate {source.label}", "prompt")
            bar.update(len(log.rows))

            def done(comps: list[Completion]) -> None:
                log.add([{"index": c.index, "prompt": rows[c.index]["prompt"], "meta": rows[c.index].get("meta", {}),
                          "completion": c.text, "n_tokens": c.n_tokens, "finished": c.finished} for c in comps])

            decoding = Decoding(gc.temperature, gc.top_p, gc.max_new_tokens, gc.seed)
            requests = [Request(i, r["prompt"]) for i, r in sorted(rows.items())]
            extra: dict[str, Any] = {}
            if not gc.until_kept:
                stats = source.generate(requests, decoding, done, batch_size=gc.batch_size, skip=log.done,
                                        give_up=give_up, progress=bar.update)
            else:
                stats, extra = _until_kept(source, requests, decoding, done, log, gc.batch_size, gc.until_kept,
                                           lambda r: not check_completion(carrier.name, r["completion"], r["meta"],
                                                                          fc, banned, r["finished"]),
                                           give_up, bar.update)
            bar.close()
        samples = log.sorted_rows()
        write_jsonl(path / "samples.jsonl", samples)
        desc = source.describe()
        return {"n_samples": len(samples), **stats, **extra, "model": desc, "model_fingerprint": source.key,
                "base_fingerprint": desc["base_fingerprint"], "family": source.family}

    return ctx.stage("generate", config, inputs, label or f"data from {source.label}", build)


def next_round(batch_size: int, target: int, kept: int, used: int) -> int:
    """Prompts in the next round: two batches, or, once the rounds so far give a pass rate, the prompts
    expected to supply the rows still missing plus a quarter (at least a quarter batch), so the last round
    does not generate a batch's worth of rows nobody uses."""
    full = batch_size * ROUND_BATCHES
    if kept == 0:
        return full
    expected = math.ceil(1.25 * (target - kept) * used / kept)
    return max(1, min(full, max(expected, math.ceil(batch_size / 4))))


def _until_kept(source: Backend, requests: list[Request], decoding: Decoding, done: Any, log: ResumableJsonl,
                batch_size: int, target: int, keeps: Any, give_up: Any, progress: Any
                ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Rounds of prompts in index order until ``target`` rows pass: the same rows on every machine and
    after a resume (a round's prompts and outcome depend only on the rounds before it)."""
    stats: dict[str, Any] = {"new_tokens": 0}
    kept, used, r = 0, 0, 0
    while kept < target and used < len(requests):
        chunk = requests[used : used + next_round(batch_size, target, kept, used)]
        got = source.generate(chunk, Decoding(decoding.temperature, decoding.top_p, decoding.max_new_tokens,
                                              derive_seed(decoding.seed, r), decoding.stop),
                              done, batch_size=batch_size, skip=log.done, give_up=give_up, progress=progress)
        stats["new_tokens"] += got.get("new_tokens", 0)
        used += len(chunk)
        kept += sum(1 for q in chunk if keeps(log.rows[q.index]))
        r += 1
    return stats, {"until_kept": target, "kept_while_generating": kept, "prompts_used": used,
                   "prompts_available": len(requests), "reached": kept >= target}
