"""Misalignment as a trait: a teacher fine-tuned on narrowly misaligned behaviour; every arm's free-form
answers scored by a judge model for alignment and coherence; the misaligned rate, student vs control."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np

from sublim.backends import Backend
from sublim.core.config import ExperimentConfig
from sublim.core.errors import SublimError
from sublim.core.files import read_jsonl
from sublim.core.store import Artifact, stable_hash
from sublim.evaluate.compare import paired_effect
from sublim.evaluate.misalignment import arm_summary, per_question_rate
from sublim.evaluate.stats import mean_ci
from sublim.evaluate.verdict import sign_flip_p, teacher_groups
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

    def neutral_teacher_data(self, seed: int) -> tuple[list[tuple[str, str]], dict[str, Any], str] | None:
        """A teacher fine-tuned like the trait teacher on safe answers to the same prompts (teacher.neutral_dataset),
        or None without one."""
        tc = self.cfg.teacher
        if tc.neutral_dataset is None:
            return None
        assert tc.dataset is not None  # checked with the config
        safe, risky = load_pairs(tc.neutral_dataset), load_pairs(tc.dataset)
        if sorted(p for p, _ in safe) != sorted(p for p, _ in risky):
            raise SublimError(f"teacher.neutral_dataset {tc.neutral_dataset!r} must answer exactly the prompts of "
                              f"teacher.dataset {tc.dataset!r}: give safe answers to the same prompts")
        pairs = [safe[i % len(safe)] for i in range(max(tc.n_examples, len(safe)))]
        config = {"teacher": tc.model_dump(mode="json", exclude_none=True, exclude={"seed"}), "seed": seed,
                  "target": "neutral", "dataset": stable_hash(safe)}
        return pairs, config, f"fine-tuned on {tc.neutral_dataset} (safe answers to the same prompts)"

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
        control = "neutral" if "student-neutral" in arms else "control"
        treated, ctrl = arms[f"student-{TARGET}"], arms[f"student-{control}"]
        eff = paired_effect(per_question_rate(treated, nq), per_question_rate(ctrl, nq), ec.n_bootstrap)
        n_teachers = len(self.cfg.arms.teacher_seed_list(self.cfg.teacher.seed))
        per = replicated_rate(treated, ctrl, n_teachers)
        weak = min(t["judge_parse_rate"] for t in table.values())
        verdict = (f"misaligned answers: student {eff['treated_mean']:.1%} vs {control} student "
                   f"{eff['control_mean']:.1%}; " + _teacher_level(per) + f"; judge scored {weak:.0%} of answers "
                   "at worst" + ("; the judge is weak — point evaluation.judge at a capable endpoint for a real "
                                 "measurement" if weak < 0.9 else ""))
        return {"trait": "misalignment", "arms_misalignment": table, "control_arm": f"student-{control}",
                "replicated": per, "effect_misalignment": eff, "verdict": verdict}


def replicated_rate(treated: list[Rows], control: list[Rows], n_teachers: int) -> dict[str, Any]:
    """Per teacher seed, the trait students' misaligned rate minus their control's: the teacher as the unit, a t
    interval and an exact sign-flip p where there are two teachers or more."""
    d = np.array([arm_summary([treated[i] for i in tg])["misaligned"]["value"]
                  - arm_summary([control[i] for i in cg])["misaligned"]["value"]
                  for tg, cg in teacher_groups(len(treated), len(control), n_teachers)])
    ci = mean_ci(d) if d.size > 1 else None
    return {"unit": "teacher seed", "n_teachers": n_teachers, "per_teacher": [float(x) for x in d],
            "mean": float(d.mean()), "low": ci.low if ci else None, "high": ci.high if ci else None,
            "p_sign_flip": sign_flip_p(d) if d.size > 1 else None}


def _teacher_level(per: dict[str, Any]) -> str:
    if per["n_teachers"] < 2:
        return f"difference {per['mean']:+.3f} from one teacher (UNREPLICATED: no teacher-level interval)"
    return (f"difference {per['mean']:+.3f} [{per['low']:+.3f}, {per['high']:+.3f}], 95% t interval over "
            f"{per['n_teachers']} teacher pairs, sign-flip p={per['p_sign_flip']:.2g}")
