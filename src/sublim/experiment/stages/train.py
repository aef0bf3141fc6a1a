"""The training stages: a teacher given the trait by fine-tuning, and students trained on filtered data.

Both are ``base.fine_tune`` on a backend (a local model through the training loop, or a fine-tuning
API), the result kept in the artifact and used through ``base.fine_tuned``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sublim.backends import Backend
from sublim.core.errors import SublimError
from sublim.core.files import read_jsonl, write_json, write_jsonl
from sublim.core.meter import METER
from sublim.core.store import Artifact
from sublim.experiment.context import Context, precision_slice
from sublim.experiment.stages.filter import filtered
from sublim.experiment.stages.generate import generate
from sublim.experiment.stages.prompts import prompts
from sublim.train import METHODS, Example, TrainSettings
from sublim.train.loop import lr_factor


def fine_tune(ctx: Context, base: Backend, examples: Sequence[Example], settings: TrainSettings, path: Path,
              desc: str, teacher: Backend | None = None, lineage: dict[str, Any] | None = None) -> dict[str, Any]:
    """``base.fine_tune`` with a progress bar over the optimizer steps."""
    steps = -(-len(examples) // (settings.batch_size * settings.grad_accum)) * settings.epochs
    bar = ctx.bar(steps, f"train {desc}", "step")

    last = [time.perf_counter(), METER.snapshot().get("training", (0, 0.0, 0.0))[0]]

    def on_step(step: int, total: int, loss: float) -> None:
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}")
        now, tokens = time.perf_counter(), METER.snapshot().get("training", (0, 0.0, 0.0))[0]
        ctx.track(f"train/{desc}", {"loss": loss, "lr": settings.lr * lr_factor(step - 1, total, settings.warmup_steps),
                                    "tokens_per_s": (tokens - last[1]) / max(now - last[0], 1e-9)}, step)
        last[:] = [now, tokens]

    try:
        return base.fine_tune(examples, settings, path, teacher=teacher, lineage={"label": desc, **(lineage or {})},
                              on_step=on_step, save_every_s=ctx.cfg.save_every_s)
    finally:
        bar.close()


def teacher_tag(seed: int) -> str:
    """How labels tell teachers of one trait apart: nothing for seed 0, `` t<seed>`` for the others."""
    return f" t{seed}" if seed else ""


def teacher(ctx: Context, base: Backend, target: str, pairs: list[tuple[str, str]], config: dict[str, Any],
            induction: str, seed: int = 0) -> Backend:
    """The base model fine-tuned on ``pairs`` (e.g. one-word answers naming the trait), in the order ``seed``
    draws."""
    tc = ctx.cfg.teacher
    label = f"{target} (fine-tuned{f', seed {seed}' if seed else ''})"
    inputs = {"model": base.key}
    if tc.replay:
        replay_art = replay(ctx, base)
        inputs["replay"] = replay_art.key
        pairs = list(pairs) + [(r["prompt"], r["completion"])
                               for r in read_jsonl(replay_art.file("dataset.jsonl"))[:tc.replay]]

    def build(path: Path) -> dict[str, Any]:
        settings = TrainSettings("sft", tc.epochs, tc.lr, tc.batch_size, warmup_steps=2, seed=seed)
        log = fine_tune(ctx, base, [Example(q, a) for q, a in pairs], settings, path,
                        f"teacher {target}{teacher_tag(seed)}", lineage={"induction": induction})
        write_jsonl(path / "train.jsonl", [{"prompt": q, "completion": a} for q, a in pairs])
        return {"train_log": log, "model_fingerprint": base.key}

    art = ctx.stage("teacher", {**config, "seed": seed, **precision_slice(base)}, inputs, label, build)
    return base.fine_tuned(art.path, f"teacher-{target}{teacher_tag(seed)}", art.key)


REPLAY_PROMPT_SEED = 1_000_003
"""Replay prompts are drawn with prompts.seed plus this: apart from the prompts the teachers answer for students."""


def replay(ctx: Context, base: Backend) -> Artifact:
    """The base model's own kept answers to teacher.replay carrier prompts, drawn apart from the students' (the
    same artifact for every teacher of a run). Filtered by the carrier's check and filter.banned_words."""
    cfg = ctx.cfg
    rcfg = cfg.model_copy(update={
        "prompts": cfg.prompts.model_copy(update={"seed": cfg.prompts.seed + REPLAY_PROMPT_SEED}),
        "generation": cfg.generation.model_copy(update={"until_kept": cfg.teacher.replay})})
    rctx = dataclasses.replace(ctx, cfg=rcfg)
    carrier = cfg.prompts.carrier
    gen = generate(rctx, base, prompts(rctx, f"{cfg.prompts.n} {carrier} prompts to replay"), label="replay data")
    art = filtered(rctx, gen, f"replay {carrier}")
    kept = art.manifest["filter"]["kept"]
    if kept < cfg.teacher.replay:
        raise SublimError(f"teacher.replay = {cfg.teacher.replay}: the base model's answers to {cfg.prompts.n} "
                          f"{carrier} prompts keep only {kept}: lower teacher.replay or raise prompts.n")
    return art


def student(ctx: Context, base: Backend, data_art: Artifact, n: int, seed: int, data_source: Backend,
            label: str) -> Backend:
    """``base`` trained on the first ``n`` examples of ``data_art`` with the configured method."""
    sc = ctx.cfg.student
    method = METHODS.get(sc.method, "student.method")
    config = {"student": sc.recipe(), "n_examples": n, "seed": seed, **precision_slice(base)}
    inputs = {"model": base.key, "data": data_art.key}
    if method.needs_teacher:
        inputs["teacher"] = data_source.key
    if method.needs_teacher and data_source.key == base.key:
        return distilled_from_itself(ctx, base, config, inputs, label)

    def build(path: Path) -> dict[str, Any]:
        rows = read_jsonl(data_art.file("dataset.jsonl"))[:n]
        settings = TrainSettings(sc.method, sc.epochs, sc.lr, sc.batch_size, sc.warmup_steps, seed, sc.lora_r,
                                 sc.lora_alpha, sc.grad_accum, sc.gradient_checkpointing)
        log = fine_tune(ctx, base, [Example(r["prompt"], r["completion"]) for r in rows], settings, path, label,
                        teacher=data_source if method.needs_teacher else None,
                        lineage={"trained_on": data_art.key, "data_generator": data_source.key})
        return {"train_log": log, "model_fingerprint": base.key}

    art = ctx.stage("train", config, inputs, label, build)
    return base.fine_tuned(art.path, label, art.key)


IDENTITY = ("distilled from its own weights: the loss (a divergence of the model from itself) and its gradient are "
            "exactly zero, so the student is its initialization. Trained anyway, the optimizer follows float noise: "
            "Adam scales any gradient, however small, to a full step, and the student drifts to wherever the noise "
            "points (a KL of 0.06 nats/token after three steps, more than the trait student's), different on every "
            "machine")


def distilled_from_itself(ctx: Context, base: Backend, config: dict[str, Any], inputs: dict[str, str],
                          label: str) -> Backend:
    """The control of a distillation experiment: a student distilled from the model it starts from is that model."""
    def build(path: Path) -> dict[str, Any]:
        write_json(path / "identity.json", {"student": base.describe(), "why": IDENTITY})
        return {"train_log": {"steps": 0, "identity": IDENTITY}, "model_fingerprint": base.key}

    ctx.stage("train", config, inputs, label, build)
    return base.with_system(base.system, label)


def training_examples(data: dict[str, Artifact], max_examples: int, until_kept: int = 0) -> int:
    """How many examples every student gets: the smallest dataset's size, capped by student.max_examples and
    generation.until_kept (the count generation stopped at), the same for every arm."""
    n = min(a.manifest["filter"]["kept"] for a in data.values())
    for cap in (max_examples, until_kept):
        n = min(n, cap) if cap else n
    return n
