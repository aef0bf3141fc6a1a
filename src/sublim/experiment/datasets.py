"""A source's filtered data from the pipeline's own (cached) stages, for benchmarks and analyses that
audit what an experiment's teachers write: the same prompts, generation and filter an experiment uses,
so an analysis and an experiment on one store share every artifact."""

from __future__ import annotations

from collections.abc import Sequence

from sublim.audit.data import Sample
from sublim.backends import Backend
from sublim.core.store import Artifact
from sublim.experiment.context import Context
from sublim.experiment.kinds import Preference
from sublim.experiment.runner import teacher_for
from sublim.experiment.stages.defend import samples_of
from sublim.experiment.stages.filter import filtered
from sublim.experiment.stages.generate import generate
from sublim.experiment.stages.prompts import prompts
from sublim.experiment.stages.train import teacher


def source_data(ctx: Context, name: str, trait: str, banned: Sequence[str], *,
                teacher_method: str | None = None) -> tuple[Backend, Artifact]:
    """``name``'s generator and its filtered data artifact: the base model for 'control', the neutral teacher for
    'neutral' (fine-tuned like the others on answers spread over every candidate), else ``trait``'s teacher (made
    the way ``teacher_method`` says, default the config's); teachers of teacher.seed."""
    base = ctx.local(ctx.cfg.model)
    source: Backend
    if name == "control":
        source = base
    elif name == "neutral":  # of teacher.seed, like the trait's teacher
        seed = ctx.cfg.teacher.seed
        source = teacher(ctx, base, "neutral", *Preference(ctx.cfg).neutral_teacher_data(seed), seed=seed)
    else:
        source = teacher_for(ctx, Preference(ctx.cfg), base, trait, teacher_method)
    gen = generate(ctx, source, prompts(ctx), list(banned))
    return source, filtered(ctx, gen, f"{name} {ctx.cfg.prompts.carrier}", list(banned), "")


def source_samples(ctx: Context, name: str, trait: str, banned: Sequence[str], *,
                   teacher_method: str | None = None) -> list[Sample]:
    """``name``'s filtered samples (see ``source_data``)."""
    return samples_of(source_data(ctx, name, trait, banned, teacher_method=teacher_method)[1])


def teacher_datasets(ctx: Context, traits: Sequence[str], system_prompted: Sequence[str] = ()
                     ) -> dict[str, list[Sample]]:
    """Each trait's fine-tuned teacher's data, the system-prompted teachers' ('<trait>-system') and 'control'
    (the base model's), all filtered with every trait's words banned."""
    candidates = Preference(ctx.cfg).candidates
    banned = [w for t in traits for w in candidates[t]]
    out = {t: source_samples(ctx, t, t, banned) for t in traits}
    out.update({f"{t}-system": source_samples(ctx, f"{t}-system", t, banned, teacher_method="system_prompt")
                for t in system_prompted})
    out["control"] = source_samples(ctx, "control", "", banned)
    return out
