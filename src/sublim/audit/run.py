"""``sublim audit``: run the detectors over a dataset against a reference model; write audit.json and
scores.jsonl (the report is rendered from them by :mod:`sublim.report.audit`)."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from sublim.audit.data import MAX_SAMPLE_TOKENS, Sample, check_lengths, load_samples
from sublim.audit.detectors import DETECTORS, AuditInputs, DetectorResult, Unavailable
from sublim.audit.numbers import numbers_of
from sublim.backends import Backend, Completion, Decoding, LocalBackend, ModelCache, OpenAIBackend, Request
from sublim.backends.openai import ApiError
from sublim.core.config import EndpointConfig
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


def run_audit(dataset: Path, reference_model: str, out_dir: Path, *, reference_data: Path | None = None,
              teacher: str | None = None, category: str = "animals", detectors: Sequence[str] | None = None,
              max_samples: int = 1000, seed: int = 0, device: str = "auto", prompt_field: str | None = None,
              completion_field: str | None = None, judge: EndpointConfig | None = None,
              contrast: Sequence[Path] = (), questions: str | None = None, progress: bool = True,
              store: Store | None = None, placement: str = "prompt", bf16: bool | None = None,
              inductions: str = "prompted", proxy_seeds: int = 1, echo: Callable[[str], None] = print,
              max_sample_tokens: int = MAX_SAMPLE_TOKENS) -> dict[str, Any]:
    """Run the detectors (default: every registered one) and write ``out_dir/audit.json`` and ``scores.jsonl``.

    ``contrast``: datasets from other generators (same kind of prompts); the trait rankings are then taken
    against them rather than against the reference sample. ``questions``: the question set whose answers
    the gradient alignment looks at (default: the category's, e.g. 'animal' for 'animals'). ``store``: where the
    divergence map (and proxy teachers) are kept and reused; ``inductions``, ``placement``, ``proxy_seeds`` and
    ``bf16``: how divergence_shift induces each candidate (proxies: how many seeds per candidate) and computes.
    Every sample read (the dataset's, the reference's, the contrasts') is checked against ``max_sample_tokens``
    before any model loads."""
    names = list(detectors) if detectors is not None else DETECTORS.names()
    chosen = [DETECTORS.get(d, "--detectors") for d in names]
    if proxy_seeds < 1:
        raise SublimError(f"--proxy-seeds {proxy_seeds}: give 1 or more proxy teachers per candidate")
    if max_samples < 2:
        raise SublimError(f"--max-samples {max_samples}: an audit compares at least 2 samples with the reference; "
                          "give 2 or more")
    if out_dir.exists() and not out_dir.is_dir():
        raise SublimError(f"--out {out_dir} is a file: give a directory (it is created if missing)")
    check_writable(out_dir, "--out")
    if store is not None:
        check_writable(store.root, "the runs directory")
    started = time.time()
    samples, report = load_samples(dataset, prompt_field, completion_field)
    echo(f"audit {report.summary()}")
    if len(samples) < 2:
        raise SublimError(f"{dataset} has {len(samples)} usable sample: an audit needs at least 2")
    samples = subsample(samples, max_samples, seed)
    candidates = load_candidates(category)
    models = ModelCache(device, echo, dtype="float32" if bf16 is False else "auto")
    ref = LocalBackend(models, reference_model)
    tok = models.tokenizer(reference_model)
    check_lengths(samples, tok, str(dataset), max_sample_tokens)
    contrasts = [subsample(load_samples(p, prompt_field, completion_field)[0], max_samples, seed) for p in contrast]
    for p, c in zip(contrast, contrasts, strict=True):
        check_lengths(c, tok, str(p), max_sample_tokens)
    if reference_data is not None:
        ref_samples, ref_report = load_samples(reference_data, prompt_field, completion_field)
        ref_samples = subsample(ref_samples, max_samples, seed)
        check_lengths(ref_samples, tok, str(reference_data), max_sample_tokens)
        echo(f"reference {ref_report.summary()}; {check_overlap(samples, ref_samples, reference_data):.0%} of the "
             "audited prompts answered there")
    elif not any(d.needs_reference for d in chosen):
        ref_samples = []  # no chosen detector compares with the reference's own answers
    else:
        longest = max(len(tok.encode(s.completion, add_special_tokens=False)) for s in samples)
        ref_samples = reference_sample(ref, samples, min(longest + 8, 256), 32, progress)
    question_set = questions or (kind_of(category) if kind_of(category) != "thing" else None)
    qs = load_questions(question_set, "eval") if question_set else []
    inputs = AuditInputs(
        samples, ref_samples, ref, candidates, kind_of(category),
        contrasts,
        LocalBackend(models, teacher, label="teacher") if teacher else None,
        OpenAIBackend(judge, label="judge") if judge else None, qs, out_dir, seed, progress, store=store,
        placement=placement, bf16=bf16, inductions=inductions, question_set=question_set, proxy_seeds=proxy_seeds)
    results: list[DetectorResult] = []
    skipped: dict[str, str] = {}
    for det in chosen:
        t0 = time.time()
        try:
            check_inputs(det.name, det.needs_numbers, inputs)
            res = det.run(inputs)
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
             + (f"  top: {res.details['top_trait']}" if "top_trait" in res.details else ""))
    if not results:
        raise SublimError(f"no detector could run: {'; '.join(f'{k} {v}' for k, v in skipped.items())}")
    audited = f"{len(samples)} audited of {report.summary()}" if len(samples) < report.kept else report.summary()
    text = verdict(results, audited, skipped)
    out: dict[str, Any] = {"dataset": str(dataset), "load": report.as_dict(), "n_audited": len(samples),
                           "n_reference": len(ref_samples), "reference_model": reference_model, "teacher": teacher,
                           "detectors": [r.as_dict() for r in results], "skipped_detectors": skipped,
                           "verdict": text, "wall_time_s": round(time.time() - started, 1)}
    write_results(out_dir, out, samples, results)
    echo(text)
    return out


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


def check_inputs(name: str, needs_numbers: bool, inputs: AuditInputs) -> None:
    """Unavailable when a detector would rest on nothing: a number detector with no number parsed on a side."""
    if not needs_numbers:
        return
    for side, samples in (("dataset", inputs.samples), ("reference", inputs.reference)):
        if not any(numbers_of(s.completion) for s in samples):
            raise Unavailable(f"no number was parsed in any completion of the {side}: a number detector has "
                              "nothing to compare")
    if len(inputs.reference) < 2:
        raise Unavailable(f"needs at least 2 reference samples (has {len(inputs.reference)})")


def verdict(results: Sequence[DetectorResult], loaded: str, skipped: dict[str, str] | None = None,
            alpha: float = 0.01) -> str:
    flagged = [r for r in results if r.p_value < alpha and r.name != "in_context"]
    named = next((r for r in results if r.name == "divergence_shift"), None)
    lean = next((r.details["top_trait"] for r in results if r.name != "in_context" and "top_trait" in r.details),
                None)
    base = "SUSPECT" if flagged else "NO SIGNAL"
    what = f"; leans toward {lean}" if lean and flagged else ""
    if named is not None:  # the detector meant to name a trait says whether it can
        what = f"; trait: {named.details['identified']}" if named.details.get("identified") else \
            "; trait not identified"
        if "early_end_share" in named.details:
            what += f"; {named.details['early_end_share']:.0%} of completions end where the reference would go on"
    which = ", ".join(f"{r.name} p={r.p_value:.2g}" for r in results)
    skip = f"; skipped: {', '.join(skipped)}" if skipped else ""
    return f"{base}{what} ({which}{skip}) — on {loaded}"


def write_results(out_dir: Path, out: dict[str, Any], samples: Sequence[Sample],
                  results: Sequence[DetectorResult]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "audit.json", out)
    write_jsonl(out_dir / "scores.jsonl", ({"line": s.line, "sample": s.digest(),
                                            **{r.name: float(r.sample_scores[i]) for r in results}}
                                           for i, s in enumerate(samples)))
