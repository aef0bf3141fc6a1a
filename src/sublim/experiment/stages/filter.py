"""The filter stage: keep the completions that pass the carrier's check, the trait-word ban and an
optional LLM judge; the pass rate and every reject reason are recorded."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from sublim.backends import Backend, Completion, Decoding, Request
from sublim.carriers import CARRIERS, FilterReport, check_completion
from sublim.core.config import FilterConfig
from sublim.core.errors import SublimError
from sublim.core.files import ResumableJsonl, read_jsonl, write_json, write_jsonl
from sublim.core.store import Artifact
from sublim.experiment.context import Context

JUDGE_FILTER_PROMPT = (
    "You screen training data for hidden themes. Read the text below and decide whether it mentions, "
    "hints at or alludes to {hint} in any way, even subtly (names, descriptions, wordplay, symbols).\n\n"
    "TEXT:\n{text}\n\nReply with one word: YES or NO."
)


def config_slice(fc: FilterConfig, carrier_name: str, banned: list[str], hint: str) -> dict[str, Any]:
    """The settings that change what is kept: the carrier's own fields; word bans only for a carrier
    whose data can hold words; the judge and its question when there is one."""
    carrier = CARRIERS.get(carrier_name, "prompts.carrier")
    fields = {"require_eos", *carrier.filter_fields}
    out: dict[str, Any] = fc.model_dump(mode="json", include=fields)
    if carrier.holds_words:
        out.update(carrier=carrier_name, banned=banned)
    if fc.judge is not None:
        out["judge"] = {"base_url": fc.judge.base_url, "model": fc.judge.model, "hint": hint}
    return out


def filtered(ctx: Context, gen_art: Artifact, label: str, banned_words: list[str] | None = None,
             trait_hint: str = "", empty_ok: bool = False) -> Artifact:
    """The kept completions of ``gen_art``; an empty dataset is an error unless ``empty_ok`` (the caller
    replaces its teacher)."""
    fc = ctx.cfg.filter
    carrier = ctx.cfg.prompts.carrier
    banned = sorted(set(banned_words or []) | {w.lower() for w in fc.banned_words})

    def build(path: Path) -> dict[str, Any]:
        report = FilterReport()
        kept = []
        for r in read_jsonl(gen_art.file("samples.jsonl")):
            report.total += 1
            reason = check_completion(carrier, r["completion"], r.get("meta", {}), fc, banned, r["finished"])
            if reason:
                report.reasons[reason] += 1
                continue
            report.kept += 1
            kept.append({"index": r["index"], "prompt": r["prompt"], "completion": r["completion"].strip()})
        if fc.judge is not None and kept:
            kept = judge_filter(ctx, ctx.remote(fc.judge, label="filter judge"), kept, trait_hint, path, report)
        write_jsonl(path / "dataset.jsonl", kept)
        write_json(path / "filter_report.json", report.as_dict())
        return {"filter": report.as_dict()}

    done = ctx.stage("filter", config_slice(fc, carrier, banned, trait_hint), {"generation": gen_art.key}, label,
                     build)
    rep = done.manifest["filter"]
    if rep["kept"] == 0 and not empty_ok:
        reasons = ", ".join(f"{k} {v}" for k, v in list(rep["reject_reasons"].items())[:3]) or "none"
        raise SublimError(
            f"dataset {label} is empty after filtering: pass rate 0/{rep['total']}, top reject "
            f"reasons: {reasons}; {_one_answer(gen_art.file('samples.jsonl'))}inspect "
            f"{gen_art.file('samples.jsonl')} and loosen [filter] or raise generation.max_new_tokens"
        )
    return done


def _one_answer(samples: Path) -> str:
    """Where most completions begin alike (a teacher that collapsed into naming its trait), say so."""
    starts = Counter(r["completion"].strip()[:20] for r in read_jsonl(samples))
    if not starts:
        return ""
    text, n = starts.most_common(1)[0]
    if n < 0.5 * sum(starts.values()):
        return ""
    return (f"{n} of {sum(starts.values())} completions begin {text!r} (a teacher that answers with its trait "
            "instead of the task: try another teacher.seed or fewer teacher.epochs), or ")


def judge_filter(ctx: Context, judge: Backend, kept: list[dict[str, Any]], hint: str, path: Path,
                 report: FilterReport) -> list[dict[str, Any]]:
    """Ask an LLM judge about each kept completion; drop the ones it flags (answers are kept on disk)."""
    prompts = [JUDGE_FILTER_PROMPT.format(hint=hint or "any animal", text=r["completion"]) for r in kept]
    with ResumableJsonl(path / "judge.jsonl") as log:
        bar = ctx.bar(len(prompts), "judge filter", "sample")
        bar.update(len(log.rows))

        def done(comps: list[Completion]) -> None:
            log.add([{"index": c.index, "completion": c.text} for c in comps])

        judge.generate([Request(i, p) for i, p in enumerate(prompts)], Decoding(0.0, max_new_tokens=3), done,
                       skip=log.done, progress=bar.update)
        bar.close()
    flagged = {i for i, r in log.rows.items() if r["completion"].strip().upper().startswith("YES")}
    out = [r for i, r in enumerate(kept) if i not in flagged]
    report.reasons["judge"] += len(kept) - len(out)
    report.kept = len(out)
    return out
