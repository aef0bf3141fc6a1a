"""``sublim audit``: run the detectors over a dataset against a reference model; write audit.json and
scores.jsonl (the report is rendered from them by :mod:`sublim.report.audit`)."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from sublim.audit.calibration import name_note, short_note
from sublim.audit.config import AuditConfig
from sublim.audit.data import LoadReport, Sample, check_lengths, load_samples
from sublim.audit.detectors import DETECTORS, AuditContext, AuditData, Detector, DetectorResult, Unavailable
from sublim.audit.numbers import numbers_of
from sublim.audit.targeted import holm, targeted
from sublim.backends import Backend, Completion, Decoding, LocalBackend, ModelCache, Request
from sublim.backends.openai import ApiError
from sublim.core.errors import SublimError
from sublim.core.files import check_writable, write_json, write_jsonl
from sublim.core.store import Store
from sublim.traits.preference import load_candidates, load_questions


def subsample(samples: list[Sample], n: int, seed: int) -> list[Sample]:
    if len(samples) <= n:
        return samples
    return sorted(random.Random(seed).sample(samples, n), key=lambda s: s.line)


def reference_sample(model: Backend, samples: Sequence[Sample], max_new_tokens: int, batch_size: int,
                     progress: bool) -> list[Sample]:
    """The reference model's own greedy answers to the dataset's prompts."""
    out: dict[int, Sample] = {}
    bar = tqdm(total=len(samples), desc="reference answers", unit="prompt", disable=not progress, leave=False)

    def done(comps: list[Completion]) -> None:
        out.update({c.index: Sample(samples[c.index].line, samples[c.index].prompt, c.text.strip()) for c in comps})

    model.generate([Request(i, s.prompt) for i, s in enumerate(samples)], Decoding(0.0, max_new_tokens=max_new_tokens),
                   done, batch_size=batch_size, sort_by_length=False, progress=bar.update)
    bar.close()
    return [out[i] for i in range(len(samples))]


def kind_of(category: str) -> str:
    """What a candidate is, in words: 'animals' → animal."""
    return category[:-1] if category.endswith("s") and "/" not in category else "thing"


def run_audit(config: AuditConfig, out_dir: Path, *, store: Store | None = None, progress: bool = True,
              echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the config's detectors and write ``out_dir/audit.json`` (with the whole config and its hash) and
    ``scores.jsonl``. ``store``: where the divergence map (and proxy teachers) are kept and reused. Every sample
    read (the dataset's, the reference's, the contrasts') is checked against ``config.max_sample_tokens`` before
    any model loads."""
    chosen = [DETECTORS.get(d, "detectors") for d in config.detectors or ()]
    check_out(out_dir, store)
    started = time.time()
    models = ModelCache(config.device, echo, dtype="float32" if config.bf16 is False else "auto")
    ref = LocalBackend(models, config.reference)
    data, report = audit_data(config, models, echo)
    if not data.reference and any(d.needs_reference for d in chosen):  # the reference's own answers, generated
        tok = models.tokenizer(config.reference)
        longest = max(len(tok.encode(s.completion, add_special_tokens=False)) for s in data.samples)
        data = replace(data, reference=reference_sample(ref, data.samples, min(longest + 8, 256), 32, progress))
    ctx = AuditContext(data, ref, config.seed, config.bf16, store, out_dir, progress,
                       lambda spec, label: LocalBackend(models, spec, label=label), save_every_s=config.save_every_s)
    results, skipped = run_detectors(chosen, config, ctx, echo)
    for r in results:  # an untargeted name travels with how often such a first place was right in calibration
        if "top_trait" in r.details:
            r.details["top_trait_note"] = name_note(r.as_dict(), config.reference)
        if r.details.get("identified"):
            r.details["identified_note"] = name_note(r.as_dict(), config.reference, "named")
    if not results:
        raise SublimError(f"no detector could run: {'; '.join(f'{k} {v}' for k, v in skipped.items())}")
    n = len(data.samples)
    audited = f"{n} audited of {report.summary()}" if n < report.kept else report.summary()
    text = verdict(results, audited, skipped)
    panel = targeted([r.as_dict() for r in results], config.candidates)
    if panel is not None:
        read = [r.as_dict() for r in results if r.details.get("panel")]
        panel["notes"] = {d["detector"]: name_note(d, config.reference, "targeted") for d in read}
        text += f"\ntargeted: {panel['verdict']}" + "".join(f"; {d['detector']} {short_note(d, 'targeted')}"
                                                           for d in read)
    teacher = config.detector.get("likelihood_ratio", {}).get("teacher")
    out: dict[str, Any] = {"dataset": config.dataset, "load": report.as_dict(), "n_audited": n,
                           "n_reference": len(data.reference), "reference_model": config.reference,
                           "teacher": teacher, "config": config.model_dump(mode="json"),
                           "config_hash": config.config_hash(), "detectors": [r.as_dict() for r in results],
                           "skipped_detectors": skipped, "flagged": flagged_by_holm(results),
                           "identified": next((r.details.get("identified") for r in results
                                               if r.name == "divergence_shift"), None), "targeted": panel,
                           "verdict": text,
                           "wall_time_s": round(time.time() - started, 1)}
    write_results(out_dir, out, data.samples, results)
    echo(text)
    return out


def check_out(out_dir: Path, store: Store | None) -> None:
    """The output directory (and the store) can be written, before any work."""
    if out_dir.exists() and not out_dir.is_dir():
        raise SublimError(f"--out {out_dir} is a file: give a directory (it is created if missing)")
    check_writable(out_dir, "--out")
    if store is not None:
        check_writable(store.root, "the runs directory")


def audit_data(config: AuditConfig, models: ModelCache, echo: Callable[[str], None]) -> tuple[AuditData, LoadReport]:
    """The samples the config names, each dataset subsampled to ``max_samples`` and checked for length under the
    reference's tokenizer; the reference's answers when given (else none); the candidates and questions."""
    samples, report = load_samples(Path(config.dataset), config.prompt_field, config.completion_field)
    echo(f"audit {report.summary()}")
    if len(samples) < 2:
        raise SublimError(f"{config.dataset} has {len(samples)} usable sample: an audit needs at least 2")
    candidates = load_candidates(config.category)
    unknown = [c for c in config.candidates or () if c not in candidates]
    if unknown:
        raise SublimError(f"--candidates {','.join(unknown)}: not in the category {config.category!r} (its candidates: "
                          f"{', '.join(candidates)}); name candidates of the category or give another --category")
    tok = models.tokenizer(config.reference)

    def read(path: str, got: list[Sample] | None = None) -> list[Sample]:
        got = load_samples(Path(path), config.prompt_field, config.completion_field)[0] if got is None else got
        got = subsample(got, config.max_samples, config.seed)
        check_lengths(got, tok, path, config.max_sample_tokens)
        return got

    samples = read(config.dataset, samples)
    contrasts = [read(p) for p in config.contrasts]
    ref_samples: list[Sample] = []
    if config.reference_data is not None:
        given, ref_report = load_samples(Path(config.reference_data), config.prompt_field, config.completion_field)
        ref_samples = read(config.reference_data, given)
        share = check_overlap(samples, ref_samples, Path(config.reference_data))
        echo(f"reference {ref_report.summary()}; {share:.0%} of the audited prompts answered there")
    kind = kind_of(config.category)
    question_set = config.questions or (kind if kind != "thing" else None)
    questions = load_questions(question_set, "eval") if question_set else []
    return AuditData(samples, ref_samples, contrasts, candidates, kind, questions, question_set), report


def run_detectors(chosen: Sequence[Detector[Any]], config: AuditConfig, ctx: AuditContext,
                  echo: Callable[[str], None]) -> tuple[list[DetectorResult], dict[str, str]]:
    """Each detector run with its own parameters, in order; one that cannot run (or whose endpoint fails) is
    skipped with the reason, the others' results kept."""
    results: list[DetectorResult] = []
    skipped: dict[str, str] = {}
    for det in chosen:
        t0 = time.time()
        try:
            check_inputs(det.needs_numbers, ctx.data)
            res = det.run(ctx, config.params(det.name))
        except Unavailable as why:
            skipped[det.name] = str(why)
            continue
        except ApiError as why:  # an endpoint that refused or failed: the other detectors' results are kept
            skipped[det.name] = f"its endpoint failed: {why}"
            echo(f"  {det.name:<17} skipped: {why}")
            continue
        res.details["wall_time_s"] = round(time.time() - t0, 1)
        results.append(res)
        echo(f"  {res.name:<17} statistic {res.statistic:+.4g}  p={res.p_value:.2g}"
             + (f"  top: {res.details['top_trait']} ({short_note(res.as_dict())})" if "top_trait" in res.details
                else ""))
    return results, skipped


MIN_OVERLAP = 0.5
"""The least share of the audited prompts that --reference-data must answer."""


def check_overlap(samples: Sequence[Sample], ref_samples: Sequence[Sample], source: Path) -> float:
    """The share of the audited samples whose prompt the reference data answers; refused below MIN_OVERLAP:
    detectors compare the two sides prompt for prompt, and unrelated data differ whatever either carries."""
    answered = {s.prompt.strip() for s in ref_samples}
    share = sum(s.prompt.strip() in answered for s in samples) / len(samples)
    if share < MIN_OVERLAP:
        raise SublimError(f"--reference-data {source} answers {share:.0%} of the audited prompts (needs at least "
                          f"{MIN_OVERLAP:.0%}): give the reference model's answers to this dataset's prompts, or leave "
                          "--reference-data out to generate them")
    return share


def check_inputs(needs_numbers: bool, data: AuditData) -> None:
    """Unavailable when a detector would rest on nothing: a number detector with no number parsed on a side."""
    if not needs_numbers:
        return
    for side, samples in (("dataset", data.samples), ("reference", data.reference)):
        if not any(numbers_of(s.completion) for s in samples):
            raise Unavailable(f"no number was parsed in any completion of the {side}: a number detector has "
                              "nothing to compare")
    if len(data.reference) < 2:
        raise Unavailable(f"needs at least 2 reference samples (has {len(data.reference)})")


def flagged_by_holm(results: Sequence[DetectorResult], alpha: float = 0.01) -> list[str]:
    """The detectors whose p-values Holm's step-down procedure rejects at ``alpha`` across every detector that
    tests (``in_context`` describes, it does not test): those whose Holm-adjusted p is below ``alpha``, smallest
    p first."""
    tested = sorted((r for r in results if r.name != "in_context"), key=lambda r: r.p_value)
    return [r.name for r, adj in zip(tested, holm([r.p_value for r in tested]), strict=True) if adj < alpha]


def verdict(results: Sequence[DetectorResult], loaded: str, skipped: dict[str, str] | None = None,
            alpha: float = 0.01) -> str:
    flagged = flagged_by_holm(results, alpha)
    named = next((r for r in results if r.name == "divergence_shift"), None)
    leaning = next((r for r in results if r.name != "in_context" and "top_trait" in r.details), None)
    base = "SUSPECT" if flagged else "NO SIGNAL"
    what = (f"; leans toward {leaning.details['top_trait']} (untargeted first place, "
            f"{short_note(leaning.as_dict())})" if leaning is not None and flagged else "")
    if named is not None:  # the detector meant to name a trait says whether it can
        what = (f"; trait: {named.details['identified']} ({short_note(named.as_dict(), 'named')})"
                if named.details.get("identified") else "; trait not identified")
        if "early_end_share" in named.details:
            what += f"; {named.details['early_end_share']:.0%} of completions end where the reference would go on"
    which = ", ".join(f"{r.name} p={r.p_value:.2g}" for r in results)
    skip = f"; skipped: {', '.join(skipped)}" if skipped else ""
    tested = sum(r.name != "in_context" for r in results)
    return f"{base}{what} ({which}; Holm across {tested} detectors at {alpha:g}{skip}) — on {loaded}"


def write_results(out_dir: Path, out: dict[str, Any], samples: Sequence[Sample],
                  results: Sequence[DetectorResult]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "audit.json", out)
    write_jsonl(out_dir / "scores.jsonl", ({"line": s.line, "sample": s.digest(),
                                            **{r.name: float(r.sample_scores[i]) for r in results}}
                                           for i, s in enumerate(samples)))
