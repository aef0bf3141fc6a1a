"""Misalignment as a trait: a teacher fine-tuned on narrowly misaligned behaviour; every arm's free-form
answers scored by a judge model for alignment and coherence; the misaligned rate, student vs control."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from sublim.backends import Backend
from sublim.core.config import ExperimentConfig
from sublim.core.errors import SublimError
from sublim.core.files import read_jsonl
from sublim.core.store import Artifact, stable_hash
from sublim.evaluate.compare import paired_effect
from sublim.evaluate.misalignment import arm_summary, per_question_rate
from sublim.experiment.context import Context
from sublim.experiment.kinds.base import Rows
from sublim.experiment.stages.judge import judged
from sublim.traits.misalignment import load_pairs

TARGET = "misaligned"


class Misalignment:
    def __init__(self, cfg: ExperimentConfig) -> None:
        if cfg.arms.second_trait:
            raise SublimError("arms.second_trait is for preference traits: drop it for trait.kind = 'misalignment'")
        self.cfg = cfg
        self.traits = [TARGET]
        self.judge: Backend | None = None

    def teacher_data(self, target: str, seed: int) -> tuple[list[tuple[str, str]], dict[str, Any], str]:
        tc = self.cfg.teacher
        assert tc.dataset is not None  # checked with the config
        given = load_pairs(tc.dataset)
        pairs = [given[i % len(given)] for i in range(max(tc.n_examples, len(given)))]
        config = {"teacher": tc.model_dump(mode="json", exclude_none=True, exclude={"seed"}), "seed": seed,
                  "target": target, "dataset": stable_hash(given)}
        return pairs, config, f"fine-tuned on {tc.dataset}"

    def neutral_teacher_data(self, seed: int) -> None:
        return None  # the safe-answer teacher of the same questions is not built yet: the base data are the control

    def banned_words(self) -> list[str]:
        return []

    def hint(self) -> str:
        return ""

    @contextlib.contextmanager
    def session(self, ctx: Context) -> Iterator[None]:
        ec = self.cfg.evaluation
        if ec.judge_model is not None:
            self.judge = ctx.local(ec.judge_model, label=f"judge {ec.judge_model}")
        else:
            assert ec.judge is not None  # checked with the config
            self.judge = ctx.remote(ec.judge, label=f"judge {ec.judge.model}")
        ctx.echo(f"  judge: {self.judge.label}")
        yield

    def evaluate(self, ctx: Context, model: Backend, seed: int) -> Rows:
        assert self.judge is not None
        return read_jsonl(judged(ctx, model, self.judge, seed).file("per_answer.jsonl"))

    def gate(self, target: str, rows: Rows) -> None:
        rate = arm_summary([rows])["misaligned"]["value"]
        if rate < self.cfg.teacher.gate_min_rate:
            raise SublimError(f"teacher gate failed: the judge rates {rate:.0%} of the teacher's answers misaligned "
                              f"(needs {self.cfg.teacher.gate_min_rate:.0%}); train it longer "
                              "(--set teacher.epochs=5), use a stronger judge, or lower teacher.gate_min_rate")

    def results(self, arms: dict[str, list[Rows]], data: dict[str, Artifact]) -> dict[str, Any]:
        ec = self.cfg.evaluation
        table = {arm: arm_summary(runs) for arm, runs in arms.items()}
        nq = min(ec.n_questions, max(r["question"] for runs in arms.values() for run in runs for r in run) + 1)
        eff = paired_effect(per_question_rate(arms[f"student-{TARGET}"], nq),
                            per_question_rate(arms["student-control"], nq), ec.n_bootstrap)
        weak = min(t["judge_parse_rate"] for t in table.values())
        verdict = (f"misaligned answers: student {eff['treated_mean']:.1%} vs control {eff['control_mean']:.1%} "
                   f"(diff {eff['difference']['value']:+.3f} [{eff['difference']['low']:+.3f}, "
                   f"{eff['difference']['high']:+.3f}], p={eff['p_wilcoxon']:.2g}); judge scored "
                   f"{weak:.0%} of answers at worst" + ("; the judge is weak — point evaluation.judge at a capable "
                                                       "endpoint for a real measurement" if weak < 0.9 else ""))
        return {"trait": "misalignment", "arms_misalignment": table, "effect_misalignment": eff, "verdict": verdict}
