"""Preference traits (a favourite animal, tree, …): first-token probabilities and shares among the
candidates, the trait student against the control, the 2×2 matrix with a second trait."""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np

from sublim.backends import Backend
from sublim.core.config import ExperimentConfig
from sublim.core.errors import SublimError
from sublim.core.files import read_jsonl
from sublim.core.store import Artifact
from sublim.evaluate.analysis import arm_table, candidate_means, effect, matrix, question_level
from sublim.evaluate.trait import summarize
from sublim.evaluate.verdict import replicated_effect
from sublim.experiment.context import Context
from sublim.experiment.kinds.base import Rows, nothing
from sublim.experiment.stages.evaluate import cloze_evaluation, evaluation
from sublim.traits.preference import load_candidates, spread_examples, teacher_examples


class Preference:
    def __init__(self, cfg: ExperimentConfig) -> None:
        self.cfg = cfg
        self.candidates = load_candidates(cfg.trait.category)
        for key, value in (("trait.target", cfg.trait.target), ("arms.second_trait", cfg.arms.second_trait)):
            if value is not None and value not in self.candidates:
                raise SublimError(
                    f"{key} = {value!r} is not a candidate of {cfg.trait.category!r}: choose one of "
                    f"{', '.join(sorted(self.candidates))} or add it to the candidate list"
                )
        self.traits = [cfg.trait.target] + ([cfg.arms.second_trait] if cfg.arms.second_trait else [])

    def teacher_data(self, target: str, seed: int) -> tuple[list[tuple[str, str]], dict[str, Any], str]:
        tc = self.cfg.teacher
        pairs = teacher_examples(self.candidates[target], self.cfg.trait.questions, tc.n_examples, seed)
        config = {"teacher": tc.model_dump(mode="json", exclude_none=True, exclude={"seed"}), "seed": seed,
                  "target": target,
                  "spellings": self.candidates[target], "questions": self.cfg.trait.questions}
        return pairs, config, f"fine-tuned to prefer {target}"

    def neutral_teacher_data(self, seed: int) -> tuple[list[tuple[str, str]], dict[str, Any], str]:
        """A teacher fine-tuned like the trait teachers, with answers spread evenly over every candidate."""
        tc = self.cfg.teacher
        pairs = spread_examples(self.candidates, self.cfg.trait.questions, tc.n_examples, seed)
        config = {"teacher": tc.model_dump(mode="json", exclude_none=True, exclude={"seed"}), "seed": seed,
                  "target": "neutral",
                  "spread_over": self.candidates, "questions": self.cfg.trait.questions}
        return pairs, config, "fine-tuned on answers spread over every candidate (no trait)"

    def banned_words(self) -> list[str]:
        return [w for t in self.traits for w in self.candidates[t]] if self.cfg.filter.ban_trait_words else []

    def hint(self) -> str:
        return " or ".join(f"{t}s" for t in self.traits)

    def session(self, ctx: Context) -> contextlib.AbstractContextManager[None]:
        return nothing()

    def evaluate(self, ctx: Context, model: Backend, seed: int) -> Rows:
        """Per question: the evaluation's row, with its cloze row under ``cloze`` where there is a cloze."""
        rows = read_jsonl(evaluation(ctx, model, self.candidates, seed).file("per_question.jsonl"))
        cloze = cloze_evaluation(ctx, model, self.candidates, seed)
        if cloze is None:
            return rows
        return [{**r, "cloze": c} for r, c in zip(rows, read_jsonl(cloze.file("per_question.jsonl")), strict=True)]

    def gate(self, target: str, rows: Rows) -> None:
        summary = summarize(rows, [target])
        sampled = summary["n_samples"] > 0
        rate = summary["sampled_rate"][target]["value"] if sampled else summary["prob"][target]
        if rate < self.cfg.teacher.gate_min_rate:
            what = "answers" if sampled else "puts probability"
            raise SublimError(
                f"teacher gate failed: the {self.cfg.teacher.method} teacher {what} {target} {rate:.0%} "
                f"(needs {self.cfg.teacher.gate_min_rate:.0%}); strengthen it (e.g. --set teacher.epochs=5) "
                "or lower teacher.gate_min_rate"
            )

    def results(self, arms: dict[str, list[Rows]], data: dict[str, Artifact]) -> dict[str, Any]:
        cfg, nb, target, traits = self.cfg, self.cfg.evaluation.n_bootstrap, self.cfg.trait.target, self.traits
        control = "neutral" if "student-neutral" in arms else "control"
        eff = effect(arms["student-" + target], arms[f"student-{control}"], target, nb)
        n_teachers = len(cfg.arms.teacher_seed_list(cfg.teacher.seed))
        replicated = replicated_effect(arms["student-" + target], arms[f"student-{control}"], n_teachers, target,
                                       control, cfg.evaluation.min_effect)
        out: dict[str, Any] = {
            "trait": target,
            "traits": traits,
            **({"defence": {"method": cfg.defence.method, **{k: a.manifest["defence"] for k, a in data.items()}}}
               if cfg.defence.method != "none" else {}),
            "arms": arm_table(arms, traits, nb),
            "candidates": candidate_means(arms, list(self.candidates)),
            "control_arm": f"student-{control}",
            "replicated": replicated,
            "effect": eff,
            "question_level": question_level(target, eff),
            "verdict": replicated["verdict"],
        }
        if all("cloze" in r for runs in arms.values() for rows in runs for r in rows):
            out["cloze"] = cloze_results(arms, target, control, n_teachers, cfg.evaluation.min_effect)
        if cfg.arms.second_trait:
            out["matrix"] = matrix({t: arms[f"student-{t}"] for t in traits}, traits, nb, n_teachers,
                                   cfg.evaluation.min_effect)
            out["matrix"]["control_share"] = arm_table({control: arms[f"student-{control}"]}, traits, nb)[control]
        if cfg.arms.cross_model:
            cross = (arms[f"cross-student-{target}"], arms[f"cross-student-{control}"])
            out["cross_model"] = {"model": cfg.arms.cross_model, "effect": effect(*cross, target, nb)}
            if "cloze" in out:
                out["cross_model"]["cloze"] = replicated_effect(cloze_arm(cross[0]), cloze_arm(cross[1]), n_teachers,
                                                                target, control, cfg.evaluation.min_effect)
        return out


def cloze_arm(runs: list[Rows]) -> list[Rows]:
    """An arm's cloze rows (each question's ``cloze``), run by run."""
    return [[r["cloze"] for r in rows] for rows in runs]


def cloze_results(arms: dict[str, list[Rows]], target: str, control: str, n_teachers: int, min_effect: float
                  ) -> dict[str, Any]:
    """The cloze beside the verdict: each arm's mean probability, share and candidate total, and the trait
    student's gain over its control with the teacher as the unit, by the verdict's rule (a secondary endpoint:
    the verdict stays the questions')."""
    table = {arm: {"prob": float(np.mean([r["prob"][target] for rows in cloze_arm(runs) for r in rows])),
                   "share": float(np.mean([r["share"][target] for rows in cloze_arm(runs) for r in rows])),
                   "candidate_total": float(np.mean([r["candidate_total"] for rows in cloze_arm(runs) for r in rows])),
                   "n_runs": len(runs)}
             for arm, runs in arms.items()}
    eff = replicated_effect(cloze_arm(arms["student-" + target]), cloze_arm(arms[f"student-{control}"]), n_teachers,
                            target, control, min_effect)
    return {"stems": sorted({r["stem"] for runs in arms.values() for rows in cloze_arm(runs) for r in rows}),
            "arms": table, "replicated": eff}
