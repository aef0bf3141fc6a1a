"""One experiment end to end: teachers → prompts → data → filter → students → evaluation → report."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sublim.config import ExperimentConfig
from sublim.errors import SublimError
from sublim.evaluate.analysis import arm_table, effect, matrix, verdict
from sublim.pipeline import stages
from sublim.pipeline.stages import Context, ModelRef
from sublim.pipeline.store import Artifact, Store, machine_info, read_jsonl, write_json
from sublim.traits.preference import load_candidates


def run_id(cfg: ExperimentConfig) -> str:
    return f"{cfg.name}-{cfg.config_hash()[:10]}"


def _check_config(cfg: ExperimentConfig, candidates: dict[str, list[str]]) -> None:
    for key, value in (("trait.target", cfg.trait.target), ("arms.second_trait", cfg.arms.second_trait)):
        if value is not None and value not in candidates:
            raise SublimError(
                f"{key} = {value!r} is not a candidate of {cfg.trait.category!r}: choose one of "
                f"{', '.join(sorted(candidates))} or add it to the candidate list"
            )
    if cfg.student.method == "api" and cfg.arms.cross_model:
        raise SublimError("arms.cross_model with student.method = 'api' is not supported: the API's model is the "
                          "only student base; drop arms.cross_model or train locally")
    if cfg.student.method.startswith("distill"):
        if cfg.arms.cross_model:
            raise SublimError("arms.cross_model needs a shared vocabulary for distillation: "
                              "use student.method = 'sft' or drop arms.cross_model")
        if cfg.teacher.method in ("system_prompt", "api"):
            raise SublimError(f"distillation from a teacher with teacher.method = {cfg.teacher.method!r} is not "
                              "supported (its logits are not at hand): use 'finetune' or student.method = 'sft'")


def run_experiment(
    cfg: ExperimentConfig,
    runs_dir: Path = Path("runs"),
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run (or resume) an experiment; returns the results written to runs/<run-id>/results.json."""
    started = time.time()
    rid = run_id(cfg)
    run_dir = Path(runs_dir) / rid
    if cfg.trait.kind == "misalignment":
        from sublim.pipeline.misalignment import run_misalignment

        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(run_dir / "config.json", cfg.model_dump(mode="json"))
        echo(f"run {rid} → {run_dir}")
        return run_misalignment(cfg, Path(runs_dir), rid, progress, echo)
    candidates = load_candidates(cfg.trait.category)
    _check_config(cfg, candidates)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "config.json", cfg.model_dump(mode="json"))
    echo(f"run {rid} → {run_dir}")
    ctx = Context(cfg, Store(Path(runs_dir)), progress, echo)

    def ev(ref: ModelRef, seed: int = 0) -> list[dict[str, Any]]:
        art = stages.evaluation(ctx, ref, candidates, seed)
        return read_jsonl(art.file("per_question.jsonl"))

    traits = [cfg.trait.target] + ([cfg.arms.second_trait] if cfg.arms.second_trait else [])
    base = ctx.base_ref(cfg.model)
    arms: dict[str, list[list[dict[str, Any]]]] = {}
    if cfg.arms.base:
        arms["base"] = [ev(base)]

    # teachers, each gated on its own trait
    teachers: dict[str, ModelRef] = {}
    for t in traits:
        ref = stages.teacher(ctx, t, candidates)
        if ref.endpoint is None:
            arms[ref.label] = [ev(ref)]
        else:  # a model behind an API is gated on sampled answers only
            stages.api_evaluation(ctx, ref, candidates)
        _gate(cfg, t, ctx.artifacts[f"evaluate/{ref.label}"])
        teachers[t] = ref

    prompt_art = stages.prompts(ctx)
    control = base
    if cfg.teacher.method == "api":
        assert cfg.teacher.endpoint is not None
        control = stages.api_ref(cfg.teacher.endpoint, "control", None)
    sources: dict[str, ModelRef] = {**teachers, "control": control}
    # every dataset gets the same filter: no trait of the experiment may be named in any of them
    banned = [w for t in traits for w in candidates[t]] if cfg.filter.ban_trait_words else []
    hint = " or ".join(f"{t}s" for t in traits)
    data: dict[str, Artifact] = {}
    for name, ref in sources.items():
        gen = stages.generation(ctx, ref, prompt_art)
        data[name] = stages.filtered(ctx, gen, f"{name} {cfg.prompts.carrier}", banned, hint)
    if cfg.defence.method != "none":
        data = {name: stages.defended(ctx, art, data["control"], f"{name} {cfg.defence.method}", prompt_art, banned)
                for name, art in data.items()}
    n = min(a.manifest["filter"]["kept"] for a in data.values())
    if cfg.student.max_examples:
        n = min(n, cfg.student.max_examples)
    echo(f"  training every student on {n} filtered examples")

    student_specs = [("", cfg.model)] + ([("cross-", cfg.arms.cross_model)] if cfg.arms.cross_model else [])
    for prefix, spec in student_specs:
        names = list(sources) if not prefix else [cfg.trait.target, "control"]
        if prefix and cfg.arms.base:  # the other family's own starting point
            arms["cross-base"] = [ev(ctx.base_ref(spec))]
        for name in names:
            arm = f"{prefix}student-{name}"
            arms[arm] = []
            for seed in cfg.arms.seeds:
                ref = stages.student(ctx, spec, data[name], n, seed, sources[name], f"{arm} seed {seed}")
                arms[arm].append(ev(ref, seed))

    results = _results(cfg, rid, arms, traits, data, ctx.artifacts, n, started)
    write_json(run_dir / "results.json", results)
    _link_artifacts(run_dir, ctx.artifacts)
    from sublim.report.experiment import render_report

    render_report(run_dir)
    echo(results["verdict"])
    return results


def _gate(cfg: ExperimentConfig, target: str, art: Artifact) -> None:
    summary = json.loads(art.file("summary.json").read_text())
    sampled = summary["n_samples"] > 0
    rate = summary["sampled_rate"][target]["value"] if sampled else summary["prob"][target]
    if rate < cfg.teacher.gate_min_rate:
        what = "answers" if sampled else "puts probability"
        raise SublimError(
            f"teacher gate failed: the {cfg.teacher.method} teacher {what} {target} {rate:.0%} "
            f"(needs {cfg.teacher.gate_min_rate:.0%}); strengthen it (e.g. --set teacher.epochs=5) "
            "or lower teacher.gate_min_rate"
        )


def _results(cfg: ExperimentConfig, rid: str, arms: dict[str, list[list[dict[str, Any]]]],
             traits: list[str], data: dict[str, Artifact], used: dict[str, Artifact], n: int,
             started: float) -> dict[str, Any]:
    nb = cfg.evaluation.n_bootstrap
    target = cfg.trait.target
    eff = effect(arms["student-" + target], arms["student-control"], target, nb)
    out: dict[str, Any] = {
        "run_id": rid,
        "config_hash": cfg.config_hash(),
        "config": cfg.model_dump(mode="json"),
        "trait": target,
        "traits": traits,
        "n_train_examples": n,
        "filter": {k: a.manifest["filter"] for k, a in data.items()},
        **({"defence": {"method": cfg.defence.method, **{k: a.manifest["defence"] for k, a in data.items()}}}
           if cfg.defence.method != "none" else {}),
        "arms": arm_table(arms, traits, nb),
        "effect": eff,
        "verdict": verdict(target, eff),
    }
    if cfg.arms.second_trait:
        students = {t: arms[f"student-{t}"] for t in traits}
        students_and_control = {**students, "control": arms["student-control"]}
        out["matrix"] = matrix(students, traits, nb)
        out["matrix"]["control_share"] = arm_table({"control": students_and_control["control"]},
                                                   traits, nb)["control"]
    if cfg.arms.cross_model:
        out["cross_model"] = {
            "model": cfg.arms.cross_model,
            "effect": effect(arms[f"cross-student-{target}"], arms["cross-student-control"], target, nb),
        }
    out["stages"] = {
        name: {"key": a.key, "path": str(a.path), "wall_time_s": a.manifest.get("wall_time_s"),
               **({"tokens_per_s": a.manifest["tokens_per_s"]} if "tokens_per_s" in a.manifest else {})}
        for name, a in used.items()
    }
    out["wall_time_s"] = round(time.time() - started, 1)
    out["machine"] = machine_info()
    return out


def _link_artifacts(run_dir: Path, used: dict[str, Artifact]) -> None:
    """runs/<run-id>/artifacts/<stage>/<name> → the shared store entry, for browsing."""
    root = run_dir / "artifacts"
    for name, art in used.items():
        link = root / name.replace(" ", "_")
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(os.path.relpath(art.path.resolve(), link.parent.resolve()))
