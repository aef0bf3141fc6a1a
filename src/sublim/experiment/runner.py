"""One runner for every experiment: it walks the arm plan (sources × student bases × seeds).

    teachers (one per trait, each gated) → prompts → each source's data → filter → defence
    → students: every student base × every source it learns from × every seed → measurement

What differs between a preference and misalignment is the trait kind's (experiment/kinds/); where
a model runs is its backend's. The runner writes results.json (rendering it is the report's job).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sublim.audit.defences import DEFENCES
from sublim.backends import Backend, ModelCache
from sublim.carriers import CARRIERS
from sublim.core.config import ExperimentConfig
from sublim.core.errors import SublimError
from sublim.core.files import check_writable, inside, write_json
from sublim.core.records import machine_info
from sublim.core.store import Artifact, Store
from sublim.core.tracking import Tracking, flat
from sublim.experiment.context import Context, StageHook
from sublim.experiment.kinds import KINDS, TraitKind
from sublim.experiment.kinds.base import Rows
from sublim.experiment.results import checked
from sublim.experiment.stages.defend import defended
from sublim.experiment.stages.filter import filtered
from sublim.experiment.stages.generate import generate
from sublim.experiment.stages.prompts import prompts
from sublim.experiment.stages.train import student, teacher, teacher_tag, training_examples
from sublim.train import METHODS


def precision_line(setting: str, got: str | None) -> str:
    """The run's compute precision; where ``auto`` meant float32 on a CPU, a warning that bf16 results (the
    committed ones among them) are not what this machine reproduces."""
    line = f"  precision: {got}"
    if setting == "auto" and got == "cpu-float32":
        line += (" (auto: this CPU has no fast bf16; results made on one that has, the committed ones among them,"
                 " were computed in bf16 and differ)")
    return line


def run_id(cfg: ExperimentConfig) -> str:
    return f"{cfg.name}-{cfg.config_hash()[:10]}"


def check_components(cfg: ExperimentConfig) -> None:
    """Every named component exists, and the combination can run (before any work is done)."""
    CARRIERS.get(cfg.prompts.carrier, "prompts.carrier")
    method = METHODS.get(cfg.student.method, "student.method")
    if cfg.defence.method != "none":
        DEFENCES.get(cfg.defence.method, "defence.method")
    if method.carriers is not None and cfg.prompts.carrier not in method.carriers:
        raise SublimError(f"student.method = {method.name!r} fits the {', '.join(sorted(method.carriers))} "
                          f"carrier only, not {cfg.prompts.carrier!r}: use 'sft' or 'distill_full'")
    if cfg.student.endpoint is not None and cfg.arms.cross_model:
        raise SublimError("arms.cross_model with a [student.endpoint] is not supported: the API's model is the "
                          "only student base; drop arms.cross_model or train locally")
    if method.needs_teacher:
        if cfg.arms.cross_model:
            raise SublimError("arms.cross_model needs a shared vocabulary for distillation: "
                              "use student.method = 'sft' or drop arms.cross_model")
        if cfg.teacher.method in ("system_prompt", "api"):
            raise SublimError(f"distillation from a teacher with teacher.method = {cfg.teacher.method!r} is not "
                              "supported (its logits are not at hand): use 'finetune' or student.method = 'sft'")


@dataclass(frozen=True)
class StudentArm:
    """One arm of the plan: a student base learning from one source's data, once per seed."""

    name: str
    base: Backend
    source: str
    seeds: list[int]


def primary_control(sources: list[str]) -> str:
    """The source whose students are the trait students' control: the neutral teacher where there is one."""
    return "neutral" if "neutral" in sources else "control"


def student_arms(ctx: Context, base: Backend, sources: list[str], target: str) -> list[StudentArm]:
    """The arm plan: the experiment's model (or the API's) learns from every source; a cross model of
    another family from the target's data and the control's (the neutral teacher's where there is one)."""
    cfg = ctx.cfg
    own = ctx.remote(cfg.student.endpoint, label=f"api:{cfg.student.endpoint.model}") \
        if cfg.student.endpoint is not None else base
    arms = [StudentArm(f"student-{s}", own, s, list(cfg.arms.seeds)) for s in sources]
    if cfg.arms.cross_model:
        cross = ctx.local(cfg.arms.cross_model)
        arms += [StudentArm(f"cross-student-{s}", cross, s, list(cfg.arms.seeds))
                 for s in (target, primary_control(sources))]
    return arms


def teacher_for(ctx: Context, kind: TraitKind | None, base: Backend, target: str, method: str | None = None,
                seed: int | None = None) -> Backend:
    """The teacher of one trait: fine-tuned from the base model (of ``seed``, default teacher.seed),
    system-prompted, or behind an API (``method``, default the config's teacher.method)."""
    tc = ctx.cfg.teacher
    method = method or tc.method
    if method == "system_prompt":
        return base.with_system(tc.system_prompt.replace("{target}", target), f"teacher-{target}")
    if method == "api":
        assert tc.endpoint is not None  # checked with the config
        return ctx.remote(tc.endpoint, tc.system_prompt.replace("{target}", target) or None, f"teacher-{target}")
    assert kind is not None  # only a fine-tuned teacher needs its kind's data
    seed = tc.seed if seed is None else seed
    return teacher(ctx, base, target, *kind.teacher_data(target, seed), seed=seed)


def neutral_for(ctx: Context, kind: TraitKind, base: Backend, seed: int) -> Backend | None:
    """The neutral teacher of ``seed`` (the trait teachers' recipe without the trait), where the plan has one."""
    if not ctx.cfg.arms.neutral or ctx.cfg.teacher.method != "finetune":
        return None
    made = kind.neutral_teacher_data(seed)
    return None if made is None else teacher(ctx, base, "neutral", *made, seed=seed)


def control_for(ctx: Context, base: Backend, traits: list[str]) -> Backend:
    """The model the control data come from: the base model, or (API teachers) the configured control model —
    never a teacher itself. Checked before any work is done."""
    tc = ctx.cfg.teacher
    if tc.method != "api":
        return base
    assert tc.control_endpoint is not None  # checked with the config
    control = ctx.remote(tc.control_endpoint, None, "control")
    for t in traits:
        if teacher_for(ctx, None, base, t).key == control.key:
            ep = tc.control_endpoint
            raise SublimError(f"teacher.control_endpoint is the {t} teacher itself ({ep.model} at {ep.base_url}, no "
                              "system prompt): point it at the teacher's base model, or give the teacher its trait "
                              "through teacher.system_prompt")
    return control


@dataclass
class Teachers:
    """The teachers that write the run's data, by source and teacher seed, and their filtered data."""

    seeds: list[int]
    sources: dict[str, dict[int, Backend]]
    data: dict[tuple[str, int], Artifact]
    replaced: dict[str, str]
    """Teacher seed -> why its pair was replaced by a spare seed."""


def teachers_and_data(ctx: Context, kind: TraitKind, base: Backend, prompt_art: Artifact,
                      arms: dict[str, list[Rows]]) -> Teachers:
    """Per teacher seed: each trait's teacher (gated on its trait) and the neutral teacher, evaluated into
    ``arms``, and the data each writes, filtered. A seed whose teachers cannot make the data is replaced by the
    next of ``arms.spare_teacher_seeds`` while there is one."""
    cfg = ctx.cfg
    banned, hint, need = kind.banned_words(), kind.hint(), max(cfg.generation.until_kept, 1)
    pending, spares = cfg.arms.teacher_seed_list(cfg.teacher.seed), list(cfg.arms.spare_teacher_seeds)
    out = Teachers([], {}, {}, {})
    while pending:
        ts = pending.pop(0)
        pair = {t: teacher_for(ctx, kind, base, t, seed=ts) for t in kind.traits}
        rows = {f"teacher-{t}": kind.evaluate(ctx, made, 0) for t, made in pair.items()}
        for t in kind.traits:  # each teacher is gated on its own trait before its data is made
            kind.gate(t, rows[f"teacher-{t}"])
        neutral = neutral_for(ctx, kind, base, ts)
        if neutral is not None:
            pair["neutral"], rows["teacher-neutral"] = neutral, kind.evaluate(ctx, neutral, 0)
        data = {name: filtered(ctx, generate(ctx, src, prompt_art, banned),
                               f"{name}{teacher_tag(ts)} {cfg.prompts.carrier}", banned, hint, empty_ok=bool(spares))
                for name, src in pair.items()}
        short = {name: art.manifest["filter"]["kept"] for name, art in data.items()
                 if art.manifest["filter"]["kept"] < need}
        if short and spares:
            out.replaced[str(ts)] = ", ".join(f"the {n} teacher's data keep {k} of the {need} needed"
                                               for n, k in short.items())
            ctx.echo(f"  teacher seed {ts}: {out.replaced[str(ts)]}; seed {spares[0]} replaces it")
            pending.append(spares.pop(0))
            continue
        out.seeds.append(ts)
        for name, src in pair.items():
            out.sources.setdefault(name, {})[ts] = src
            out.data[(name, ts)] = data[name]
        for arm, got in rows.items():
            arms.setdefault(arm, []).append(got)
    return out


def run_experiment(cfg: ExperimentConfig, runs_dir: Path = Path("runs"), progress: bool = True,
                   echo: Callable[[str], None] = print, *, hook: StageHook | None = None,
                   models: ModelCache | None = None, tracking: Tracking | None = None) -> dict[str, Any]:
    """Run (or resume) an experiment; returns the results written to runs/<run-id>/results.json.

    ``hook`` computes the stages elsewhere (an executor's; default: here), ``models`` is a cache of loaded
    models to use (default: a new one), ``tracking`` where training curves and the results are also sent."""
    started = time.time()
    rid = run_id(cfg)
    run_dir = inside(runs_dir, Path(runs_dir) / rid, "run folder")
    check_components(cfg)
    check_writable(Path(runs_dir), "the runs directory")
    kind: TraitKind = KINDS[cfg.trait.kind](cfg)
    ctx = Context(cfg, Store(Path(runs_dir)), progress, echo, models=models, hook=hook,  # type: ignore[arg-type]
                  tracking=tracking)
    arms: dict[str, list[Rows]] = {}
    with kind.session(ctx):
        base = ctx.local(cfg.model)
        if hook is None:
            ctx.models.base(cfg.model)  # a model that cannot load leaves no run folder behind
        control = control_for(ctx, base, kind.traits)
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(run_dir / "config.json", cfg.model_dump(mode="json"))
        echo(f"run {rid} → {run_dir}")
        echo(precision_line(cfg.dtype, base.precision))
        if cfg.arms.base:
            arms["base"] = [kind.evaluate(ctx, base, 0)]
        prompt_art = prompts(ctx)
        banned, hint = kind.banned_words(), kind.hint()  # the same filter for every dataset
        made = teachers_and_data(ctx, kind, base, prompt_art, arms)
        tseeds, sources, data = made.seeds, made.sources, made.data
        identity = METHODS.get(cfg.student.method, "student.method").needs_teacher and control is base
        if "neutral" not in sources or not identity:  # one dataset, whatever the teacher seed
            sources["control"] = dict.fromkeys(tseeds[:1], control)
            data[("control", tseeds[0])] = filtered(ctx, generate(ctx, control, prompt_art, banned),
                                                    f"control {cfg.prompts.carrier}", banned, hint)
        if cfg.defence.method != "none":
            reference = data.get(("control", tseeds[0])) or data[("neutral", tseeds[0])]
            data = {(name, ts): defended(ctx, art, reference, f"{name}{teacher_tag(ts)} {cfg.defence.method}",
                                         prompt_art, banned, base) for (name, ts), art in data.items()}
        named = {f"{k}{teacher_tag(ts)}": a for (k, ts), a in data.items()}
        n = training_examples(named, cfg.student.max_examples, cfg.generation.until_kept)
        echo(f"  training every student on {n} filtered examples")
        cross_base_done = False
        for arm in student_arms(ctx, base, list(sources), kind.traits[0]):
            if arm.name.startswith("cross-") and cfg.arms.base and not cross_base_done:
                arms["cross-base"] = [kind.evaluate(ctx, arm.base, 0)]  # the other family's own starting point
                cross_base_done = True
            arms[arm.name] = [kind.evaluate(ctx, student(ctx, arm.base, data[(arm.source, ts)], n, seed, src,
                                                         f"{arm.name}{teacher_tag(ts)} seed {seed}"), seed)
                              for ts, src in sources[arm.source].items() for seed in arm.seeds]
    results = {"run_id": rid, "kind": cfg.trait.kind, "config_hash": cfg.config_hash(),
               "config": cfg.model_dump(mode="json"), "n_train_examples": n,
               "teacher_seeds": tseeds, "replaced_teacher_seeds": made.replaced, "student_seeds": list(cfg.arms.seeds),
               "filter": {k: a.manifest["filter"] for k, a in named.items()}, **kind.results(arms, named),
               "stages": stage_table(ctx.artifacts), "wall_time_s": round(time.time() - started, 1),
               "machine": machine_info()}
    results = checked(results)  # the shape the shipped schema promises, or a failing run (and test)
    ctx.track("results", headline(results))
    write_json(run_dir / "results.json", results)
    link_artifacts(run_dir, ctx.artifacts)
    echo(results["verdict"])
    return results


def headline(results: dict[str, Any]) -> dict[str, float]:
    """The figures a tracker shows for a run: the replicated effect (per endpoint: mean, interval, p), each arm's
    point estimates, the wall time."""
    picked = {"replicated": results.get("replicated") or {},
              "arms": {a: {m: v.get("value") for m, v in fig.items() if isinstance(v, dict)}
                       for a, fig in (results.get("arms") or {}).items() if isinstance(fig, dict)},
              "wall_time_s": results.get("wall_time_s")}
    return {k.replace(".", "/"): float(v) for k, v in flat(picked).items()
            if isinstance(v, int | float) and not isinstance(v, bool)}


def stage_table(used: dict[str, Artifact]) -> dict[str, Any]:
    return {name: {"key": a.key, "path": str(a.path), "wall_time_s": a.manifest.get("wall_time_s"),
                   **{k: a.manifest[k] for k in ("tokens_per_s", "peak_rss_mb") if k in a.manifest}}
            for name, a in used.items()}


def link_artifacts(run_dir: Path, used: dict[str, Artifact]) -> None:
    """runs/<run-id>/artifacts/<stage>/<name> → the shared store entry, for browsing."""
    root = run_dir / "artifacts"
    for name, art in used.items():
        link = root / name.replace(" ", "_")
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(os.path.relpath(art.path.resolve(), link.parent.resolve()))
