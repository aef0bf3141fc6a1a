"""The defend stage: a registered defence applied to a filtered dataset before students see it (the
same to every arm), with its cost (kept and changed fractions) recorded."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from sublim.audit.data import Sample
from sublim.audit.defences import DEFENCES, CarrierCheck, DefenceContext, defence_context
from sublim.audit.detectors import NumberFrequency
from sublim.backends import Backend, BackendError, TokenReader
from sublim.core.errors import SublimError
from sublim.core.files import ResumableJsonl, read_jsonl, write_jsonl
from sublim.core.store import Artifact
from sublim.experiment.context import Context, precision_slice


def samples_of(art: Artifact) -> list[Sample]:
    """A dataset artifact's rows as samples (a sample's line is the prompt's index)."""
    return [Sample(r["index"], r["prompt"], r["completion"]) for r in read_jsonl(art.file("dataset.jsonl"))]


def rewriter(ctx: Context, own: Backend) -> Backend:
    """The model a regenerating defence rewrites with: of another family than the experiment's."""
    dc = ctx.cfg.defence
    model = ctx.local(dc.model)
    if model.family == own.family:
        raise SublimError(f"defence.model = {dc.model!r} is of the {model.family} family, like the experiment's "
                          f"model: regenerate with another family (e.g. defence.model = \"gemma3-270m\")")
    return model


def reference_reader(own: Backend, method: str) -> TokenReader:
    """The experiment's model's token reads, for a defence that reads the data under it."""
    try:
        return own.reader()
    except BackendError as why:
        raise SublimError(f"defence.method = {method!r} reads the data under the experiment's model, which must then "
                          f"be a local one (a catalog name, .gguf or directory): {why}") from None


def defended(ctx: Context, data_art: Artifact, reference_art: Artifact, label: str, prompt_art: Artifact,
             banned: list[str], own: Backend) -> Artifact:
    """``data_art`` after the configured defence; ``reference_art`` (the control data) is what a defence that
    needs scores or examples gets."""
    dc, gc, fc = ctx.cfg.defence, ctx.cfg.generation, ctx.cfg.filter
    defence = DEFENCES.get(dc.method, "defence.method")
    params = defence.build(dc.model_dump(), "defence")
    config: dict[str, Any] = {"method": dc.method, "seed": dc.seed, **params.model_dump(mode="json")}
    inputs = {"data": data_art.key}
    model = rewriter(ctx, own) if defence.needs_model else None
    if model is not None:
        config.update(carrier=ctx.cfg.prompts.carrier, banned=sorted(banned),
                      generation=gc.model_dump(mode="json", include={"temperature", "max_new_tokens", "seed"}))
        inputs["model"] = model.key
        config.update(precision_slice(model))
    if defence.needs_scores or defence.needs_model:
        inputs["reference"] = reference_art.key
    bf16, reader = False, None
    if defence.needs_reads:  # the data teacher-forced under the base model, the students' start
        reader = reference_reader(own, dc.method)
        bf16 = reader.fast_bf16()
        inputs["reference_model"] = own.key
        config.update(carrier=ctx.cfg.prompts.carrier, banned=sorted(banned), divergence_bf16=bf16)
        if defence.needs_continuation:  # greedy: only the token budget changes what the reference writes
            config.update(generation=gc.model_dump(mode="json", include={"max_new_tokens"}))

    def build(path: Path) -> dict[str, Any]:
        samples = samples_of(data_art)
        meta = {r["index"]: r.get("meta", {}) for r in read_jsonl(prompt_art.file("prompts.jsonl"))}
        scores = None
        if defence.needs_scores:  # the samples least like the control data, by their numbers
            scores = NumberFrequency(samples_of(reference_art), n_permutations=0).score(samples).sample_scores
        base = DefenceContext(dc.seed, CarrierCheck(ctx.cfg.prompts.carrier, fc, banned, meta), gc.max_new_tokens,
                              gc.temperature, gc.batch_size, scores, model, samples_of(reference_art))
        dbar = ctx.bar(len(samples), f"divergence map {label}", "sample") if reader is not None else None
        given = defence_context(defence, samples, base, reader=reader, bf16=bf16,
                                map_progress=dbar.update if dbar is not None else None)
        if given.reads is not None and dbar is not None:
            given.reads.divergence.save(path / "divergence.npz")
            dbar.close()
        log_file = ResumableJsonl(path / "regenerated.jsonl") if model is not None else contextlib.nullcontext()
        with log_file as log:
            bar = ctx.bar(len(samples), f"{dc.method} {label}", "sample")
            bar.update(len(log.rows) if log is not None else 0)
            given.log, given.progress = log, bar.update
            out, cost = defence.apply(samples, given, params)
            bar.close()
        write_jsonl(path / "dataset.jsonl", [{"index": s.line, "prompt": s.prompt, "completion": s.completion}
                                             for s in out])
        # data made elsewhere (an imported file) passed no filter here: only what the defence kept is known
        return {"defence": cost, "filter": {**data_art.manifest.get("filter", {}), "kept": len(out)}}

    return ctx.stage("defend", config, inputs, label, build)
