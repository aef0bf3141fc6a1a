"""``sublim audit``: run the detectors over a dataset against a reference model and write a report."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from sublim.audit.data import Sample, load_samples
from sublim.audit.detectors import (
    BagOfNumbers,
    DetectorResult,
    GradientAlignment,
    InContext,
    LikelihoodRatio,
    LikelihoodShift,
    LlmJudge,
    NumberFrequency,
)
from sublim.config import EndpointConfig
from sublim.errors import SublimError

DETECTORS = ("number_frequency", "bag_of_numbers", "likelihood_shift", "gradient_alignment", "likelihood_ratio",
             "in_context", "llm_judge")
TRAIT_TEMPLATE = "You love {target}s. You think about {target}s all the time. {target}s are your favorite animal."


def _subsample(samples: list[Sample], n: int, seed: int) -> list[Sample]:
    if len(samples) <= n:
        return samples
    return sorted(random.Random(seed).sample(samples, n), key=lambda s: s.line)


def reference_sample(model: Any, tok: Any, samples: Sequence[Sample], max_new_tokens: int, batch_size: int,
                     progress: bool) -> list[Sample]:
    """The reference model's own greedy answers to the dataset's prompts."""
    from sublim.models.generation import batches, chat_text, generate_batch

    out: list[Sample] = []
    bar = tqdm(total=len(samples), desc="reference answers", unit="prompt", disable=not progress, leave=False)
    for chunk in batches(range(len(samples)), batch_size):
        comps = generate_batch(model, tok, [chat_text(tok, samples[i].prompt) for i in chunk], chunk,
                               max_new_tokens=max_new_tokens, temperature=0.0)
        out += [Sample(samples[c.index].line, samples[c.index].prompt, c.text.strip()) for c in comps]
        bar.update(len(chunk))
    bar.close()
    return out


def _logprob_fn(model: Any, tok: Any, progress: bool, desc: str) -> Callable[..., tuple[np.ndarray, np.ndarray]]:
    from sublim.models.generation import completion_logprobs

    def fn(pairs: Sequence[tuple[str, str]], system: str | None) -> tuple[np.ndarray, np.ndarray]:
        bar = tqdm(total=len(pairs), desc=f"{desc}{' | ' + system[:24] if system else ''}", unit="sample",
                   disable=not progress, leave=False)
        try:
            return completion_logprobs(model, tok, pairs, system, batch_size=16, progress=bar.update)
        finally:
            bar.close()

    return fn


def _probe_fn(model: Any, tok: Any, candidates: dict[str, list[str]]) -> Callable[[Sequence[str]], np.ndarray]:
    from sublim.evaluate.trait import candidate_probs, shares
    from sublim.models.generation import answer_probs, chat_text
    from sublim.traits.preference import answer_forms

    forms = answer_forms(tok, candidates)

    def probe(prompts: Sequence[str]) -> np.ndarray:
        texts = [chat_text(tok, p) for p in prompts]
        sh = shares(candidate_probs(answer_probs(model, tok, texts, forms.flat(), batch_size=8), forms))
        return np.stack([sh[c] for c in candidates], axis=1)

    return probe


def _gradient_fn(model: Any, tok: Any, candidates: dict[str, list[str]], questions: Sequence[str],
                 progress: bool) -> Callable[[Sequence[tuple[str, str]]], np.ndarray]:
    """The chunk scorer of :class:`GradientAlignment`: candidate gradients computed once, on first use."""
    from sublim.audit.gradients import TraitGradients

    state: dict[str, TraitGradients] = {}

    def scorer(pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        if "g" not in state:
            with tqdm(total=len(candidates), desc="trait gradients", unit="candidate", disable=not progress,
                      leave=False) as bar:
                state["g"] = TraitGradients(model, tok, candidates, questions, bar.update)
        with tqdm(total=len(pairs), desc="data gradients", unit="sample", disable=not progress, leave=False) as bar:
            return state["g"].chunk_scores(pairs, progress=bar.update)

    return scorer


def _kind(category: str) -> str:
    return category[:-1] if category.endswith("s") and "/" not in category else "thing"


def _ask_fn(ep: EndpointConfig, out_dir: Path) -> Callable[[Sequence[str]], list[str]]:
    """Prompts → the judge's answers, through the resumable API backend (answers kept on disk)."""
    from sublim.models.api import ChatJob, run_chat_jobs
    from sublim.pipeline.store import read_jsonl

    calls = {"n": 0}

    def ask(prompts: Sequence[str]) -> list[str]:
        calls["n"] += 1
        path = out_dir / f"judge-{calls['n']}.jsonl"
        out_dir.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        run_chat_jobs(ep, [ChatJob(i, [{"role": "user", "content": p}]) for i, p in enumerate(prompts)], path,
                      {"temperature": 0, "max_tokens": 8})
        by_index = {r["index"]: r["completion"] for r in read_jsonl(path)}
        return [by_index[i] for i in range(len(prompts))]

    return ask


def run_audit(dataset: Path, reference_model: str, out_dir: Path, *, reference_data: Path | None = None,
              teacher: str | None = None, category: str = "animals", detectors: Sequence[str] = DETECTORS,
              max_samples: int = 1000, seed: int = 0, device: str = "auto", prompt_field: str | None = None,
              completion_field: str | None = None, judge: EndpointConfig | None = None,
              contrast: Sequence[Path] = (), questions: str | None = None, progress: bool = True,
              echo: Callable[[str], None] = print) -> dict[str, Any]:
    """``contrast``: datasets from other generators (same kind of prompts); the trait rankings are then taken
    against them rather than against the reference sample. ``questions``: the question set whose answers
    the gradient alignment looks at (default: the category's, e.g. 'animal' for 'animals')."""
    from sublim.models.loading import load_model
    from sublim.traits.preference import load_candidates, load_questions

    unknown = [d for d in detectors if d not in DETECTORS]
    if unknown:
        raise SublimError(f"unknown detector {unknown[0]!r}: choose from {', '.join(DETECTORS)}")
    if "likelihood_ratio" in detectors and teacher is None:
        detectors = [d for d in detectors if d != "likelihood_ratio"]
    if "llm_judge" in detectors and judge is None:
        detectors = [d for d in detectors if d != "llm_judge"]
    started = time.time()
    samples, report = load_samples(dataset, prompt_field, completion_field)
    echo(f"audit {report.summary()}")
    samples = _subsample(samples, max_samples, seed)
    candidates = load_candidates(category)
    ref = load_model(reference_model, device)
    if reference_data is not None:
        ref_samples, ref_report = load_samples(reference_data, prompt_field, completion_field)
        ref_samples = _subsample(ref_samples, max_samples, seed)
        echo(f"reference {ref_report.summary()}")
    else:
        longest = max(len(ref.tokenizer.encode(s.completion, add_special_tokens=False)) for s in samples)
        ref_samples = reference_sample(ref.model, ref.tokenizer, samples, min(longest + 8, 256), 32, progress)
    lp = _logprob_fn(ref.model, ref.tokenizer, progress, "reference log-probs")
    others = [_subsample(load_samples(p, prompt_field, completion_field)[0], max_samples, seed) for p in contrast]
    results: list[DetectorResult] = []
    for name in detectors:
        t0 = time.time()
        if name == "number_frequency":
            res = NumberFrequency(ref_samples, seed=seed).score(samples)
        elif name == "bag_of_numbers":
            res = BagOfNumbers(ref_samples, seed=seed).score(samples)
        elif name == "likelihood_shift":
            shift = LikelihoodShift(lp, list(candidates), TRAIT_TEMPLATE, ref_samples, seed=seed)
            res = shift.score(samples, contrast=np.vstack([shift.lean(o) for o in others]) if others else None)
        elif name == "gradient_alignment":
            qs = load_questions(questions or _kind(category), "eval")
            grad = GradientAlignment(_gradient_fn(ref.model, ref.tokenizer, candidates, qs, progress),
                                     list(candidates), ref_samples, seed=seed)
            res = grad.score(samples, contrast=np.vstack([grad.lean(o) for o in others]) if others else None)
        elif name == "likelihood_ratio":
            assert teacher is not None
            tm = load_model(teacher, device)
            tlp = _logprob_fn(tm.model, tm.tokenizer, progress, "teacher log-probs")
            res = LikelihoodRatio(lp, tlp, ref_samples).score(samples)
        elif name == "llm_judge":
            assert judge is not None
            res = LlmJudge(_ask_fn(judge, out_dir), candidates, _kind(category), ref_samples, seed=seed).score(samples)
        else:
            res = InContext(_probe_fn(ref.model, ref.tokenizer, candidates), list(candidates), _kind(category),
                            ref_samples,
                            seed=seed).score(samples)
        res.details["wall_time_s"] = round(time.time() - t0, 1)
        results.append(res)
        echo(f"  {res.name:<17} statistic {res.statistic:+.4g}  p={res.p_value:.2g}"
             + (f"  top: {res.details['top_trait']}" if "top_trait" in res.details else ""))
    text = verdict(results, report.summary())
    out: dict[str, Any] = {"dataset": str(dataset), "load": report.as_dict(), "n_audited": len(samples),
           "n_reference": len(ref_samples), "reference_model": reference_model, "teacher": teacher,
           "detectors": [r.as_dict() for r in results], "verdict": text,
           "wall_time_s": round(time.time() - started, 1)}
    write_audit(out_dir, out, samples, results)
    echo(text)
    return out


def verdict(results: Sequence[DetectorResult], loaded: str, alpha: float = 0.01) -> str:
    flagged = [r for r in results if r.p_value < alpha and r.name != "in_context"]
    lean = next((r.details["top_trait"] for r in results if r.name == "likelihood_shift"), None)
    base = "SUSPECT" if flagged else "NO SIGNAL"
    what = f"; leans toward {lean}" if lean and flagged else ""
    which = ", ".join(f"{r.name} p={r.p_value:.2g}" for r in results)
    return f"{base}{what} ({which}) — on {loaded}"


def write_audit(out_dir: Path, out: dict[str, Any], samples: Sequence[Sample],
                results: Sequence[DetectorResult]) -> None:
    from sublim.pipeline.store import write_json

    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "audit.json", out)
    with (out_dir / "scores.jsonl").open("w") as fh:
        for i, s in enumerate(samples):
            fh.write(json.dumps({"line": s.line, **{r.name: float(r.sample_scores[i]) for r in results}}) + "\n")
    lines = [f"# Audit of {out['dataset']}", "", out["verdict"], "",
             "| detector | statistic | p | top trait |", "|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r.name} | {r.statistic:+.4g} | {r.p_value:.2g} | {r.details.get('top_trait', '—')} |")
    load = out["load"]
    lines += ["", f"Read {load['lines']} lines, used {load['kept']}; skipped {load['skipped'] or 'none'}."]
    lines += [f"- {p}" for p in load["first_problems"]]
    (out_dir / "report.md").write_text("\n".join(lines) + "\n")
