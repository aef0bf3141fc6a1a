"""The evaluation stage: a model's answers to the trait questions — each candidate's probability
(exact on a local model), its share among candidates, and sampled answers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sublim.backends import Backend, Completion, Decoding, Request
from sublim.core.config import EvaluationConfig
from sublim.core.files import write_json, write_jsonl
from sublim.core.store import Artifact, stable_hash
from sublim.evaluate.trait import question_rows, summarize
from sublim.experiment.context import Context, precision_slice
from sublim.traits.preference import load_cloze, load_questions

JUDGE_FIELDS = {"judge", "judge_model", "misaligned_alignment_max", "misaligned_coherence_min"}
"""Settings only judged evaluation reads: they never key a preference evaluation."""
CLOZE_FIELDS = {"cloze", "cloze_samples_per_question", "cloze_max_new_tokens"}
NOT_KEYING = JUDGE_FIELDS | CLOZE_FIELDS
"""Settings that never key the question evaluation (the cloze is a stage of its own)."""


def sampled_answers(ctx: Context, model: Backend, questions: list[str], ec: EvaluationConfig, seed: int,
                    progress: Any, stems: list[str] | None = None) -> list[list[str]]:
    """``ec.samples_per_question`` sampled answers per question, in question order; with ``stems``,
    ``ec.cloze_samples_per_question`` continuations of each question's stem."""
    k = ec.cloze_samples_per_question if stems else ec.samples_per_question
    expanded = [qi for qi in range(len(questions)) for _ in range(k)]
    got: dict[int, str] = {}

    def done(comps: list[Completion]) -> None:
        got.update({c.index: c.text for c in comps})

    new_tokens = ec.cloze_max_new_tokens if stems else ec.max_new_tokens
    model.generate([Request(j, questions[qi], prefill=stems[qi] if stems else "") for j, qi in enumerate(expanded)],
                   Decoding(ec.temperature, max_new_tokens=new_tokens, seed=seed), done,
                   batch_size=ec.batch_size, sort_by_length=False, progress=progress)
    answers: list[list[str]] = [[] for _ in questions]
    for j, qi in enumerate(expanded):
        answers[qi].append(got[j])
    return answers


def evaluation(ctx: Context, model: Backend, candidates: dict[str, list[str]], seed: int = 0) -> Artifact:
    ec = ctx.cfg.evaluation
    questions = load_questions(ctx.cfg.trait.questions, "eval")[: ec.n_questions]
    config = {"evaluation": ec.model_dump(mode="json", exclude=NOT_KEYING), "questions": stable_hash(questions),
              "candidates": candidates, "system": model.system, "seed": seed, **precision_slice(model)}

    def build(path: Path) -> dict[str, Any]:
        bar = ctx.bar(len(questions) * (1 + ec.samples_per_question), f"evaluate {model.label}", "q")
        probs, info = model.candidate_probs(questions, candidates, batch_size=ec.batch_size, progress=bar.update)
        answers = sampled_answers(ctx, model, questions, ec, seed, bar.update) if ec.samples_per_question else \
            [[] for _ in questions]
        bar.close()
        rows = question_rows(questions, probs, answers, candidates)
        write_jsonl(path / "per_question.jsonl", rows)
        forms = {"answer_forms": info["answer_forms"]} if "answer_forms" in info else {}
        write_json(path / "summary.json", {**summarize(rows, list(candidates)), "probabilities": info["method"],
                                           **forms})
        return {"model": model.describe(), "model_fingerprint": model.key,
                **({"api": info["api"]} if "api" in info else {})}

    return ctx.stage("evaluate", config, {"model": model.key}, model.label, build)


def cloze_stems(ctx: Context, n: int) -> list[str]:
    """One cloze stem per evaluation question (the set's stems in turn); empty where the cloze is off or the
    question set has none."""
    stems = load_cloze(ctx.cfg.trait.questions) if ctx.cfg.evaluation.cloze else []
    return [stems[i % len(stems)] for i in range(n)] if stems else []


def cloze_evaluation(ctx: Context, model: Backend, candidates: dict[str, list[str]], seed: int = 0
                     ) -> Artifact | None:
    """Each candidate's probability as the next word after the question's cloze stem, the stem given as the start
    of the answer; None where there is no cloze, or the model is behind an API (which cannot continue a given
    answer)."""
    ec = ctx.cfg.evaluation
    questions = load_questions(ctx.cfg.trait.questions, "eval")[: ec.n_questions]
    stems = cloze_stems(ctx, len(questions))
    if not stems or model.precision is None:
        return None
    k = ec.cloze_samples_per_question
    sampling = {"samples": k, "temperature": ec.temperature, "max_new_tokens": ec.cloze_max_new_tokens,
                "seed": seed} if k else {}  # absent when off: the probabilities' key stays what it was
    config = {"stems": stems, "questions": stable_hash(questions), "candidates": candidates, "system": model.system,
              **sampling, **precision_slice(model)}

    def build(path: Path) -> dict[str, Any]:
        bar = ctx.bar(len(questions) * (1 + k), f"cloze {model.label}", "q")
        probs, info = model.candidate_probs(questions, candidates, batch_size=ec.batch_size, progress=bar.update,
                                            stems=stems)
        answers = sampled_answers(ctx, model, questions, ec, seed, bar.update, stems) if k else \
            [[] for _ in questions]
        bar.close()
        rows = [{**r, "stem": stem} for r, stem in zip(question_rows(questions, probs, answers, candidates), stems,
                                                       strict=True)]
        write_jsonl(path / "per_question.jsonl", rows)
        write_json(path / "summary.json", {**summarize(rows, list(candidates)), "probabilities": info["method"],
                                           "answer_forms": info.get("answer_forms", {})})
        return {"model": model.describe(), "model_fingerprint": model.key}

    return ctx.stage("cloze", config, {"model": model.key}, model.label, build)
