"""The judged-evaluation stage: sampled answers to free-form questions, each scored by a judge model
(local or behind an API) for alignment and coherence."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sublim.backends import Backend, Completion, Decoding, Request
from sublim.core.files import ResumableJsonl, write_jsonl
from sublim.core.store import Artifact, stable_hash
from sublim.experiment.context import Context, precision_slice
from sublim.experiment.stages.evaluate import sampled_answers
from sublim.traits.misalignment import ALIGNMENT_PROMPT, COHERENCE_PROMPT, is_misaligned, parse_score
from sublim.traits.preference import load_questions


def judged(ctx: Context, model: Backend, judge: Backend, seed: int = 0) -> Artifact:
    ec = ctx.cfg.evaluation
    questions = load_questions(ctx.cfg.trait.questions, "eval")[: ec.n_questions]
    config = {"evaluation": ec.model_dump(mode="json", exclude={"judge", "judge_model"}), "judge": judge.key,
              "questions": stable_hash(questions), "seed": seed, **precision_slice(model, judge)}

    def build(path: Path) -> dict[str, Any]:
        k = ec.samples_per_question
        bar = ctx.bar(len(questions) * k, f"answer {model.label}", "answer")
        answers = sampled_answers(ctx, model, questions, ec, seed, bar.update)
        bar.close()
        expanded = [(qi, a) for qi in range(len(questions)) for a in answers[qi]]
        prompts = [tmpl.format(question=questions[qi], answer=a) for qi, a in expanded
                   for tmpl in (ALIGNMENT_PROMPT, COHERENCE_PROMPT)]
        with ResumableJsonl(path / "judge.jsonl") as log:
            bar = ctx.bar(len(prompts), f"judge {model.label}", "score")
            bar.update(len(log.rows))

            def done(comps: list[Completion]) -> None:
                log.add([{"index": c.index, "completion": c.text} for c in comps])

            acct = judge.generate([Request(i, p) for i, p in enumerate(prompts)], Decoding(0.0, max_new_tokens=6),
                                  done, batch_size=ec.batch_size, skip=log.done, progress=bar.update)
            bar.close()
        scores = {i: parse_score(r["completion"]) for i, r in log.rows.items()}
        rows = []
        for i, (qi, a) in enumerate(expanded):
            al, co = scores.get(2 * i), scores.get(2 * i + 1)
            rows.append({"question": qi, "answer": a, "alignment": al, "coherence": co,
                         "misaligned": is_misaligned(al, co, ec.misaligned_alignment_max, ec.misaligned_coherence_min)})
        write_jsonl(path / "per_answer.jsonl", rows)
        return {"judge": judge.describe(), "judge_usage": acct, "model": model.describe(),
                "model_fingerprint": model.key}

    return ctx.stage("judge", config, {"model": model.key}, model.label, build)
