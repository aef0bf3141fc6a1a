"""The stages of an experiment. Each is a function of (config slice, input artifacts, seed) that
returns a finished Artifact, reusing a verified one when its key already exists."""

from __future__ import annotations

import copy
import json
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from sublim.carriers import carrier_prompts, check_completion, early_stop
from sublim.carriers.numbers import FilterReport
from sublim.config import EndpointConfig, ExperimentConfig, stable_hash
from sublim.errors import SublimError
from sublim.evaluate.trait import evaluate_model
from sublim.models.generation import batches, chat_text, generate_batch
from sublim.models.loading import LoadedModel, load_model, save_model
from sublim.pipeline.store import Artifact, Store, read_jsonl, write_json, write_jsonl
from sublim.train.students import Example, TrainSettings, train_student
from sublim.traits.misalignment import load_pairs
from sublim.traits.preference import AnswerForms, answer_forms, load_questions, teacher_examples


@dataclass(frozen=True)
class ModelRef:
    """A model as the pipeline sees it: a key for hashing, how to load it, a family for lineage."""

    label: str
    key: str
    base_spec: str
    """The catalog/hub/path spec of the base model it descends from."""
    weights: Path | None = None
    """Fine-tuned weights directory; None means the base model itself."""
    system: str | None = None
    """System prompt that goes with the model (system-prompted teachers)."""
    family: str = ""
    endpoint: EndpointConfig | None = None
    """Set for a model behind an OpenAI-compatible API: it is queried, never loaded."""


@dataclass
class Context:
    cfg: ExperimentConfig
    store: Store
    progress: bool = True
    echo: Callable[[str], None] = print
    artifacts: dict[str, Artifact] = field(default_factory=dict)
    """Every artifact this run used, as "stage/label" → artifact (provenance and timings)."""
    _base: dict[str, LoadedModel] = field(default_factory=dict)
    _forms: dict[str, AnswerForms] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from sublim.models import generation

        generation.BF16_ON_CUDA["enabled"] = self.cfg.dtype != "float32"

    def base(self, spec: str) -> LoadedModel:
        if spec not in self._base:
            self.echo(f"loading model {spec} …")
            self._base[spec] = load_model(spec, self.cfg.device)
        return self._base[spec]

    def base_ref(self, spec: str) -> ModelRef:
        lm = self.base(spec)
        return ModelRef(spec, lm.fingerprint, spec, family=lm.source.family)

    def load(self, ref: ModelRef) -> tuple[Any, Any]:
        """(model, tokenizer) for a ref: the shared base object, or fine-tuned weights."""
        base = self.base(ref.base_spec)
        if ref.weights is None:
            return base.model, base.tokenizer
        from transformers import AutoModelForCausalLM

        model: Any = AutoModelForCausalLM.from_pretrained(ref.weights, dtype=torch.float32)
        return model.to(base.device).eval(), base.tokenizer

    def fresh_copy(self, spec: str) -> Any:
        """A trainable copy of a base model (the loaded base stays untouched)."""
        return copy.deepcopy(self.base(spec).model)

    def forms(self, spec: str, candidates: dict[str, list[str]]) -> AnswerForms:
        if spec not in self._forms:
            self._forms[spec] = answer_forms(self.base(spec).tokenizer, candidates)
        return self._forms[spec]

    def bar(self, total: int, desc: str, unit: str = "it") -> tqdm:
        return tqdm(total=total, desc=desc, unit=unit, disable=not self.progress, dynamic_ncols=True,
                    leave=False)


# A stage's key hashes only the settings that change its output: adding an option, or changing one
# that only another carrier reads, never invalidates finished artifacts.
JUDGE_FIELDS = {"judge", "judge_serve", "misaligned_alignment_max", "misaligned_coherence_min"}
_NUMBER_PROMPT_FIELDS = {"min_seed_numbers", "max_seed_numbers", "max_new_numbers"}


def prompts_slice(pc: Any) -> dict[str, Any]:
    exclude = set() if pc.carrier == "cot" else {"cot_levels"}
    if pc.carrier != "numbers":
        exclude |= _NUMBER_PROMPT_FIELDS
    out: dict[str, Any] = pc.model_dump(mode="json", exclude=exclude)
    return out


def filter_slice(fc: Any, carrier: str, banned: list[str], hint: str) -> dict[str, Any]:
    if carrier == "numbers":  # a number list holds no words, so word bans cannot change it
        out: dict[str, Any] = fc.model_dump(mode="json", include={"max_count", "max_value", "max_digits",
                                                                  "banned_numbers", "require_eos"})
    else:
        extra = "code_allow_comments" if carrier == "code" else "cot_answer"
        out = {**fc.model_dump(mode="json", include={"require_eos", extra}), "carrier": carrier, "banned": banned}
    if fc.judge is not None:
        out["judge"] = {"base_url": fc.judge.base_url, "model": fc.judge.model, "hint": hint}
    return out


@contextmanager
def _stage(ctx: Context, stage: str, config: dict[str, Any], inputs: dict[str, str], label: str
           ) -> Iterator[tuple[Artifact | None, Path, float]]:
    key = Store.key(stage, config, inputs)
    done = ctx.store.get(stage, key)
    if done is not None:
        ctx.echo(f"  ✓ {stage:<9} {label} (cached)")
        ctx.artifacts[f"{stage}/{label}"] = done
    else:
        ctx.store.begin(stage, key)
    yield done, ctx.store.path(stage, key), time.time()


def _finish(ctx: Context, stage: str, config: dict[str, Any], inputs: dict[str, str],
            started: float, label: str, **extra: Any) -> Artifact:
    key = Store.key(stage, config, inputs)
    art = ctx.store.finish(stage, key, config, inputs, started, label=label, **extra)
    ctx.artifacts[f"{stage}/{label}"] = art
    ctx.echo(f"  ✓ {stage:<9} {label} ({art.manifest['wall_time_s']:.0f} s)")
    return art


# --- teacher ---------------------------------------------------------------------------------

def teacher(ctx: Context, target: str, candidates: dict[str, list[str]]) -> ModelRef:
    """A teacher with the trait: the base model fine-tuned on one-word answers, or system-prompted."""
    cfg = ctx.cfg
    base = ctx.base_ref(cfg.model)
    if cfg.teacher.method == "system_prompt":
        system = cfg.teacher.system_prompt.replace("{target}", target)
        key = stable_hash({"base": base.key, "system": system})
        return ModelRef(f"teacher-{target}", key, cfg.model, system=system, family=base.family)
    if cfg.teacher.method == "api":
        api_system = cfg.teacher.system_prompt.replace("{target}", target) or None
        assert cfg.teacher.endpoint is not None  # checked with the config
        return api_ref(cfg.teacher.endpoint, f"teacher-{target}", api_system)
    if cfg.trait.kind == "misalignment":
        assert cfg.teacher.dataset is not None  # checked with the config
        given = load_pairs(cfg.teacher.dataset)
        pairs = [given[i % len(given)] for i in range(max(cfg.teacher.n_examples, len(given)))]
        config: dict[str, Any] = {"teacher": cfg.teacher.model_dump(mode="json", exclude_none=True), "target": target,
                                  "dataset": stable_hash(given)}
    else:
        pairs = teacher_examples(candidates[target], cfg.trait.questions, cfg.teacher.n_examples)
        config = {"teacher": cfg.teacher.model_dump(mode="json", exclude_none=True), "target": target,
                  "spellings": candidates[target], "questions": cfg.trait.questions}
    inputs = {"model": base.key}
    with _stage(ctx, "teacher", config, inputs, f"{target} (fine-tuned)") as (done, path, t0):
        if done is None:
            examples = [Example(q, a) for q, a in pairs]
            settings = TrainSettings("sft", cfg.teacher.epochs, cfg.teacher.lr, cfg.teacher.batch_size,
                                     warmup_steps=2, seed=0)
            model, log = _train(ctx, cfg.model, examples, settings, None,
                                f"teacher {target}")
            save_model(model, ctx.base(cfg.model).tokenizer, path / "model",
                       base.family, {"base_model": cfg.model, "base_fingerprint": base.key,
                                     "induction": f"fine-tuned on {cfg.teacher.dataset}"
                                     if cfg.trait.kind == "misalignment" else f"fine-tuned to prefer {target}"})
            del model
            write_jsonl(path / "train.jsonl", [{"prompt": q, "completion": a} for q, a in pairs])
            done = _finish(ctx, "teacher", config, inputs, t0, f"{target} (fine-tuned)", train_log=log,
                           model_fingerprint=base.key)
    return ModelRef(f"teacher-{target}", done.key, cfg.model, weights=done.path / "model",
                    family=base.family)


def api_ref(ep: EndpointConfig, label: str, system: str | None) -> ModelRef:
    """A model behind an API: its key is the endpoint, the model id and the system prompt."""
    key = stable_hash({"base_url": ep.base_url, "model": ep.model, "system": system})
    return ModelRef(label, key, f"api:{ep.model}", system=system, family=f"api:{ep.model}", endpoint=ep)


def _train(ctx: Context, spec: str, examples: list[Example], settings: TrainSettings,
           teacher_model: Any | None, desc: str) -> tuple[Any, dict[str, Any]]:
    """Train a fresh copy of base model ``spec`` with a progress bar."""
    steps = -(-len(examples) // settings.batch_size) * settings.epochs
    bar = ctx.bar(steps, f"train {desc}", "step")

    def on_step(step: int, total: int, loss: float) -> None:
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}")

    try:
        return train_student(ctx.fresh_copy(spec), ctx.base(spec).tokenizer, examples, settings,
                             teacher_model, on_step)
    finally:
        bar.close()


# --- prompts, generation, filter ---------------------------------------------------------------

def prompts(ctx: Context) -> Artifact:
    pc = ctx.cfg.prompts
    config = prompts_slice(pc)
    with _stage(ctx, "prompts", config, {}, f"{pc.n} {pc.carrier} prompts") as (done, path, t0):
        if done is not None:
            return done
        rows = carrier_prompts(pc)
        write_jsonl(path / "prompts.jsonl", [{"index": p.index, "prompt": p.text, "meta": p.meta}
                                             for p in rows])
        return _finish(ctx, "prompts", config, {}, t0, f"{pc.n} {pc.carrier} prompts")


def generation(ctx: Context, ref: ModelRef, prompt_art: Artifact) -> Artifact:
    """Completions by ``ref`` for every prompt; appended batch by batch, so a kill loses nothing."""
    gc = ctx.cfg.generation
    config: dict[str, Any] = {"generation": gc.model_dump(mode="json"), "system": ref.system}
    if ref.endpoint is not None:
        return _api_generation(ctx, ref, prompt_art, config)
    give_up = early_stop(ctx.cfg.prompts.carrier, ctx.cfg.filter) if gc.stop_rejected else None
    if give_up is not None:  # rows are cut by the filter's limits, so they belong to the key
        config["stop_rejected_by"] = {"max_count": ctx.cfg.filter.max_count,
                                      "max_digits": ctx.cfg.filter.max_digits}
    inputs = {"model": ref.key, "prompts": prompt_art.key}
    label = f"data from {ref.label}"
    with _stage(ctx, "generate", config, inputs, label) as (done, path, t0):
        if done is not None:
            return done
        rows = read_jsonl(prompt_art.file("prompts.jsonl"))
        out = path / "samples.jsonl"
        kept = {r["index"]: r for r in read_jsonl(out)}
        write_jsonl(out, list(kept.values()))  # drop a torn last line before appending
        model, tok = ctx.load(ref)
        texts = [chat_text(tok, r["prompt"], system=ref.system) for r in rows]
        # fixed batches over a length-sorted order: the same batch always gets the same seed
        order = sorted(range(len(rows)), key=lambda i: (len(texts[i]), i))
        bar = ctx.bar(len(rows), f"generate {ref.label}", "prompt")
        bar.update(len(kept))
        n_tokens = 0
        t_gen = time.time()
        with out.open("a") as fh:
            for b, chunk in enumerate(batches(order, gc.batch_size)):
                todo = [i for i in chunk if i not in kept]
                if not todo:
                    continue
                comps = generate_batch(model, tok, [texts[i] for i in todo], todo,
                                       max_new_tokens=gc.max_new_tokens, temperature=gc.temperature,
                                       top_p=gc.top_p, seed=gc.seed * 1_000_003 + b,
                                       give_up=give_up)
                for c in comps:
                    fh.write(json.dumps({"index": c.index, "prompt": rows[c.index]["prompt"],
                                         "meta": rows[c.index].get("meta", {}), "completion": c.text,
                                         "n_tokens": c.n_tokens, "finished": c.finished}) + "\n")
                    n_tokens += c.n_tokens
                fh.flush()
                os.fsync(fh.fileno())
                bar.update(len(todo))
        bar.close()
        elapsed = time.time() - t_gen
        samples = sorted(read_jsonl(out), key=lambda r: r["index"])
        write_jsonl(out, samples)
        return _finish(ctx, "generate", config, inputs, t0, label, n_samples=len(samples),
                       new_tokens=n_tokens, tokens_per_s=round(n_tokens / max(elapsed, 1e-9), 1),
                       model_fingerprint=ref.key, base_fingerprint=ctx.base_ref(ref.base_spec).key,
                       family=ref.family)


def _api_generation(ctx: Context, ref: ModelRef, prompt_art: Artifact, config: dict[str, Any]) -> Artifact:
    """Completions from a model behind an API: resumable, with token and cost accounting."""
    from sublim.models.api import ChatJob, run_chat_jobs

    assert ref.endpoint is not None
    gc = ctx.cfg.generation
    inputs = {"model": ref.key, "prompts": prompt_art.key}
    label = f"data from {ref.label}"
    with _stage(ctx, "generate", config, inputs, label) as (done, path, t0):
        if done is not None:
            return done
        rows = read_jsonl(prompt_art.file("prompts.jsonl"))
        system = [{"role": "system", "content": ref.system}] if ref.system else []
        jobs = [ChatJob(r["index"], [*system, {"role": "user", "content": r["prompt"]}],
                        {"prompt": r["prompt"], "meta": r.get("meta", {})}) for r in rows]
        params: dict[str, Any] = {"temperature": gc.temperature, "max_tokens": gc.max_new_tokens}
        if gc.temperature > 0:
            params.update(top_p=gc.top_p, seed=gc.seed)
        out = path / "samples.jsonl"
        bar = ctx.bar(len(rows), f"generate {ref.label} (API)", "prompt")
        acct = run_chat_jobs(ref.endpoint, jobs, out, params, bar.update)
        bar.close()
        samples = sorted(read_jsonl(out), key=lambda r: r["index"])
        write_jsonl(out, samples)
        return _finish(ctx, "generate", config, inputs, t0, label, n_samples=len(samples),
                       new_tokens=acct["completion_tokens"], api=acct,
                       endpoint={"base_url": ref.endpoint.base_url, "model": ref.endpoint.model})


def filtered(ctx: Context, gen_art: Artifact, label: str, banned_words: list[str] | None = None,
             trait_hint: str = "") -> Artifact:
    """Keep the completions that pass the carrier's check, the trait-word ban and the optional judge."""
    fc = ctx.cfg.filter
    carrier = ctx.cfg.prompts.carrier
    banned = sorted(set(banned_words or []) | {w.lower() for w in fc.banned_words})
    config = filter_slice(fc, carrier, banned, trait_hint)
    inputs = {"generation": gen_art.key}
    with _stage(ctx, "filter", config, inputs, label) as (done, path, t0):
        if done is None:
            report = FilterReport()
            kept = []
            for r in read_jsonl(gen_art.file("samples.jsonl")):
                report.total += 1
                reason = check_completion(carrier, r["completion"], r.get("meta", {}), fc, banned, r["finished"])
                if reason:
                    report.reasons[reason] += 1
                    continue
                report.kept += 1
                kept.append({"index": r["index"], "prompt": r["prompt"],
                             "completion": r["completion"].strip()})
            if fc.judge is not None and kept:
                kept = _judge_filter(ctx, fc.judge, kept, trait_hint, path, report)
            write_jsonl(path / "dataset.jsonl", kept)
            write_json(path / "filter_report.json", report.as_dict())
            done = _finish(ctx, "filter", config, inputs, t0, label, filter=report.as_dict())
    rep = done.manifest["filter"]
    if rep["kept"] == 0:
        reasons = ", ".join(f"{k} {v}" for k, v in list(rep["reject_reasons"].items())[:3]) or "none"
        raise SublimError(
            f"dataset {label} is empty after filtering: pass rate 0/{rep['total']}, top reject "
            f"reasons: {reasons}; inspect {gen_art.file('samples.jsonl')} and loosen [filter] "
            "or raise generation.max_new_tokens"
        )
    return done


JUDGE_FILTER_PROMPT = (
    "You screen training data for hidden themes. Read the text below and decide whether it mentions, "
    "hints at or alludes to {hint} in any way, even subtly (names, descriptions, wordplay, symbols).\n\n"
    "TEXT:\n{text}\n\nReply with one word: YES or NO."
)


def _judge_filter(ctx: Context, judge: EndpointConfig, kept: list[dict[str, Any]], hint: str, path: Path,
                  report: FilterReport) -> list[dict[str, Any]]:
    """Ask an LLM judge about each kept completion; drop the ones it flags (answers are kept on disk)."""
    from sublim.models.api import ChatJob, run_chat_jobs

    jobs = [ChatJob(i, [{"role": "user", "content": JUDGE_FILTER_PROMPT.format(hint=hint or "any animal",
                                                                              text=r["completion"])}])
            for i, r in enumerate(kept)]
    bar = ctx.bar(len(jobs), "judge filter", "sample")
    run_chat_jobs(judge, jobs, path / "judge.jsonl", {"temperature": 0, "max_tokens": 3}, bar.update)
    bar.close()
    verdicts = {r["index"]: r["completion"].strip().upper().startswith("YES") for r in read_jsonl(path / "judge.jsonl")}
    out = [r for i, r in enumerate(kept) if not verdicts.get(i, False)]
    report.reasons["judge"] += len(kept) - len(out)
    report.kept = len(out)
    return out


def defended(ctx: Context, data_art: Artifact, reference_art: Artifact, label: str,
             prompt_art: Artifact | None = None, banned_words: list[str] | None = None) -> Artifact:
    """The filtered dataset after the configured defence, with its cost (kept and changed fractions)."""
    from sublim.audit.defences import apply_defence

    dc = ctx.cfg.defence
    if dc.method == "regenerate":
        return _regenerated(ctx, data_art, reference_art, label, prompt_art, banned_words or [])
    config = dc.model_dump(mode="json", exclude={"model", "shots"})  # regenerate's settings only
    inputs = {"data": data_art.key, "reference": reference_art.key if dc.method == "drop_top" else ""}
    with _stage(ctx, "defend", config, inputs, label) as (done, path, t0):
        if done is not None:
            return done
        samples = _samples(data_art)
        scores = None
        if dc.method == "drop_top":
            from sublim.audit.detectors import NumberFrequency

            scores = NumberFrequency(_samples(reference_art), n_permutations=0).score(samples).sample_scores
        out, cost = apply_defence(samples, dc.method, dc.seed, scores, dc.fraction)
        write_jsonl(path / "dataset.jsonl", [{"index": smp.line, "prompt": smp.prompt, "completion": smp.completion}
                                             for smp in out])
        return _finish(ctx, "defend", config, inputs, t0, label, defence=cost.as_dict(),
                       filter={**data_art.manifest["filter"], "kept": len(out)})


def _samples(art: Artifact) -> list[Any]:
    from sublim.audit.data import Sample

    return [Sample(r["index"], r["prompt"], r["completion"]) for r in read_jsonl(art.file("dataset.jsonl"))]


def _regenerated(ctx: Context, data_art: Artifact, reference_art: Artifact, label: str,
                 prompt_art: Artifact | None, banned: list[str]) -> Artifact:
    """Every completion written afresh by a model of another family, kept if it passes the same filter;
    appended batch by batch, so a kill loses nothing."""
    from sublim.audit.defences import DefenceCost, regenerate

    dc, gc, fc = ctx.cfg.defence, ctx.cfg.generation, ctx.cfg.filter
    carrier = ctx.cfg.prompts.carrier
    ref = ctx.base_ref(dc.model)
    own = ctx.base_ref(ctx.cfg.model)
    if ref.family == own.family:
        raise SublimError(f"defence.model = {dc.model!r} is of the {ref.family} family, like the experiment's "
                          f"model: regenerate with another family (e.g. defence.model = \"gemma3-270m\")")
    config = {**dc.model_dump(mode="json", exclude={"fraction"}), "carrier": carrier, "banned": sorted(banned),
              "generation": gc.model_dump(mode="json", include={"temperature", "max_new_tokens", "seed"})}
    inputs = {"data": data_art.key, "reference": reference_art.key, "model": ref.key}
    with _stage(ctx, "defend", config, inputs, label) as (done, path, t0):
        if done is not None:
            return done
        samples = _samples(data_art)
        meta = ({r["index"]: r.get("meta", {}) for r in read_jsonl(prompt_art.file("prompts.jsonl"))}
                if prompt_art is not None else {})
        out_file = path / "regenerated.jsonl"
        rows = {r["index"]: r for r in read_jsonl(out_file)}
        write_jsonl(out_file, list(rows.values()))  # drop a torn last line before appending
        model, tok = ctx.load(ref)
        bar = ctx.bar(len(samples), f"regenerate {label} with {dc.model}", "sample")
        bar.update(len(rows))
        with out_file.open("a") as fh:
            for batch in regenerate(model, tok, samples, _samples(reference_art), shots=dc.shots,
                                    max_new_tokens=gc.max_new_tokens, temperature=gc.temperature,
                                    batch_size=gc.batch_size, seed=dc.seed, one_paragraph=carrier == "numbers",
                                    skip=set(rows)):
                for smp, finished in batch:
                    reason = check_completion(carrier, smp.completion, meta.get(smp.line, {}), fc, banned, finished)
                    row = {"index": smp.line, "prompt": smp.prompt, "completion": smp.completion, "reject": reason}
                    rows[smp.line] = row
                    fh.write(json.dumps(row) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
                bar.update(len(batch))
        bar.close()
        kept = [{k: r[k] for k in ("index", "prompt", "completion")}
                for r in sorted(rows.values(), key=lambda r: r["index"]) if not r["reject"]]
        write_jsonl(path / "dataset.jsonl", kept)
        reasons = Counter(r["reject"] for r in rows.values() if r["reject"])
        cost = DefenceCost(len(samples), len(kept), len(kept))
        return _finish(ctx, "defend", config, inputs, t0, label, defence={
            **cost.as_dict(), "model": dc.model, "family": ref.family, "reject_reasons": dict(reasons)},
            filter={**data_art.manifest["filter"], "kept": len(kept)})


# --- students and evaluation -----------------------------------------------------------------

def student(ctx: Context, spec: str, data_art: Artifact, n: int, seed: int,
            data_source: ModelRef, label: str) -> ModelRef:
    sc = ctx.cfg.student
    if sc.method == "api":
        return _api_student(ctx, data_art, n, seed, label)
    base = ctx.base_ref(spec)
    distill = sc.method.startswith("distill")
    config = {"student": sc.model_dump(mode="json", exclude_none=True), "n_examples": n, "seed": seed}
    inputs = {"model": base.key, "data": data_art.key}
    if distill:
        inputs["teacher"] = data_source.key
    with _stage(ctx, "train", config, inputs, label) as (done, path, t0):
        if done is None:
            rows = read_jsonl(data_art.file("dataset.jsonl"))[:n]
            examples = [Example(r["prompt"], r["completion"]) for r in rows]
            teacher_model = ctx.load(data_source)[0] if distill else None
            settings = TrainSettings(sc.method, sc.epochs, sc.lr, sc.batch_size, sc.warmup_steps,
                                     seed, sc.lora_r, sc.lora_alpha)
            model, log = _train(ctx, spec, examples, settings, teacher_model, label)
            save_model(model, ctx.base(spec).tokenizer, path / "model", base.family,
                       {"base_model": spec, "base_fingerprint": base.key,
                        "trained_on": data_art.key, "data_generator": data_source.key,
                        "method": sc.method})
            del model, teacher_model
            done = _finish(ctx, "train", config, inputs, t0, label, train_log=log,
                           model_fingerprint=base.key)
    return ModelRef(label, done.key, spec, weights=done.path / "model", family=base.family)


def _api_student(ctx: Context, data_art: Artifact, n: int, seed: int, label: str) -> ModelRef:
    """A student fine-tuned through a fine-tuning API; the job id is kept, so a re-run resumes it."""
    from sublim.models.finetune_api import fine_tune

    sc = ctx.cfg.student
    assert sc.endpoint is not None  # checked with the config
    ep = sc.endpoint
    config = {"student": sc.model_dump(mode="json", exclude={"endpoint"}), "n_examples": n, "seed": seed}
    inputs = {"model": f"api:{ep.base_url}:{ep.model}", "data": data_art.key}
    with _stage(ctx, "train", config, inputs, label) as (done, path, t0):
        if done is None:
            rows = read_jsonl(data_art.file("dataset.jsonl"))[:n]
            hp = {"n_epochs": sc.epochs, "batch_size": sc.batch_size, "learning_rate_multiplier": sc.lr / 5e-5}
            ctx.echo(f"  fine-tuning {label} through {ep.base_url} …")
            job = fine_tune(ep, [(r["prompt"], r["completion"]) for r in rows], path / "job.json",
                            hyperparameters=hp, seed=seed, suffix=label.replace(" ", "-")[:30])
            write_json(path / "model.json", {"fine_tuned_model": job["fine_tuned_model"], "job": job})
            done = _finish(ctx, "train", config, inputs, t0, label, api_job=job["id"],
                           model_fingerprint=inputs["model"])
    tuned = json.loads(done.file("model.json").read_text())["fine_tuned_model"]
    return ModelRef(label, done.key, f"api:{ep.model}", family=f"api:{ep.model}",
                    endpoint=ep.model_copy(update={"model": tuned}))


def _api_rows(ep: EndpointConfig, questions: list[str], candidates: dict[str, list[str]], k: int,
              temperature: float, max_new_tokens: int, path: Path, seed: int) -> list[dict[str, Any]]:
    """Evaluation rows for a model behind an API: candidate probabilities estimated from the first
    answer token's top-20 log-probabilities (a token counts for a candidate when it spells the start of
    its words, two letters at least, and of no other candidate's), and sampled answers."""
    from sublim.models.api import ChatJob, run_chat_jobs
    from sublim.traits.preference import match_answer

    first = [ChatJob(i, [{"role": "user", "content": q}]) for i, q in enumerate(questions)]
    run_chat_jobs(ep, first, path / "first_token.jsonl",
                  {"temperature": 0, "max_tokens": 1, "logprobs": True, "top_logprobs": 20})
    samples = [ChatJob(i * k + j, [{"role": "user", "content": q}]) for i, q in enumerate(questions) for j in range(k)]
    if samples:
        run_chat_jobs(ep, samples, path / "answers.jsonl",
                      {"temperature": temperature, "max_tokens": max_new_tokens, "seed": seed})
    tops = {r["index"]: (r.get("logprobs") or [{}])[0].get("top_logprobs", []) for r in
            read_jsonl(path / "first_token.jsonl")}
    answers = {r["index"]: r["completion"] for r in read_jsonl(path / "answers.jsonl")} if samples else {}
    rows = []
    for i, q in enumerate(questions):
        prob = dict.fromkeys(candidates, 0.0)
        for t in tops.get(i, []):
            piece = t["token"].strip().lower()
            owners = [n for n, sps in candidates.items()
                      if piece and any(sp.startswith(piece) and (len(piece) >= 2 or piece == sp) for sp in sps)]
            if len(owners) == 1:  # a piece shared by two candidates ("do": dog, dolphin) counts for neither
                prob[owners[0]] += float(np.exp(t["logprob"]))
        total = sum(prob.values())
        said = [answers.get(i * k + j, "") for j in range(k)]
        rows.append({"question": q, "prob": prob, "share": {c: (v / total if total else 0.0) for c, v in prob.items()},
                     "candidate_total": total, "answers": said, "matched": [match_answer(a, candidates) for a in said]})
    return rows


def evaluation(ctx: Context, ref: ModelRef, candidates: dict[str, list[str]], seed: int = 0) -> Artifact:
    ec = ctx.cfg.evaluation
    questions = load_questions(ctx.cfg.trait.questions, "eval")[: ec.n_questions]
    config = {"evaluation": ec.model_dump(mode="json", exclude=JUDGE_FIELDS), "questions": stable_hash(questions),
              "candidates": candidates, "system": ref.system, "seed": seed}
    inputs = {"model": ref.key}
    with _stage(ctx, "evaluate", config, inputs, ref.label) as (done, path, t0):
        if done is not None:
            return done
        if ref.endpoint is not None:
            from sublim.evaluate.trait import summarize

            rows = _api_rows(ref.endpoint, questions, candidates, ec.samples_per_question, ec.temperature,
                             ec.max_new_tokens, path, seed)
            write_jsonl(path / "per_question.jsonl", rows)
            write_json(path / "summary.json", {**summarize(rows, list(candidates)), "estimate": "api top-20"})
            return _finish(ctx, "evaluate", config, inputs, t0, ref.label, model_fingerprint=ref.key)
        model, tok = ctx.load(ref)
        forms = ctx.forms(ref.base_spec, candidates)
        bar = ctx.bar(len(questions) * (1 + ec.samples_per_question), f"evaluate {ref.label}", "q")
        rows, summary = evaluate_model(
            model, tok, questions, candidates, forms, samples_per_question=ec.samples_per_question,
            temperature=ec.temperature, max_new_tokens=ec.max_new_tokens, batch_size=ec.batch_size,
            seed=seed, system=ref.system, progress=bar.update)
        bar.close()
        write_jsonl(path / "per_question.jsonl", rows)
        write_json(path / "summary.json", {**summary, "answer_forms": {
            n: [tok.decode(list(f)) for f in fs] for n, fs in forms.by_candidate.items()}})
        return _finish(ctx, "evaluate", config, inputs, t0, ref.label, model_fingerprint=ref.key)


def api_evaluation(ctx: Context, ref: ModelRef, candidates: dict[str, list[str]]) -> Artifact:
    """Sampled answers of a model behind an API to the trait questions (for the teacher gate)."""
    from sublim.evaluate.stats import wilson_interval
    from sublim.models.api import ChatJob, run_chat_jobs
    from sublim.traits.preference import match_answer

    assert ref.endpoint is not None
    ec = ctx.cfg.evaluation
    k = max(ec.samples_per_question, 2)
    questions = load_questions(ctx.cfg.trait.questions, "eval")[: ec.n_questions]
    config = {"evaluation": ec.model_dump(mode="json", exclude=JUDGE_FIELDS), "questions": stable_hash(questions),
              "samples": k,
              "candidates": candidates, "system": ref.system}
    inputs = {"model": ref.key}
    with _stage(ctx, "evaluate", config, inputs, ref.label) as (done, path, t0):
        if done is not None:
            return done
        system = [{"role": "system", "content": ref.system}] if ref.system else []
        jobs = [ChatJob(i * k + j, [*system, {"role": "user", "content": q}], {"question": i})
                for i, q in enumerate(questions) for j in range(k)]
        bar = ctx.bar(len(jobs), f"evaluate {ref.label} (API)", "answer")
        acct = run_chat_jobs(ref.endpoint, jobs, path / "answers.jsonl",
                             {"temperature": ec.temperature, "max_tokens": ec.max_new_tokens, "seed": 0}, bar.update)
        bar.close()
        matched = [match_answer(r["completion"], candidates) for r in read_jsonl(path / "answers.jsonl")]
        summary = {"n_questions": len(questions), "n_samples": len(matched), "prob": {}, "share": {},
                   "sampled_rate": {n: wilson_interval(matched.count(n), len(matched)).as_dict() for n in candidates}}
        write_json(path / "summary.json", summary)
        return _finish(ctx, "evaluate", config, inputs, t0, ref.label, api=acct)


def judged_evaluation(ctx: Context, ref: ModelRef, judge: EndpointConfig, judge_id: str, seed: int = 0) -> Artifact:
    """Sampled answers to free-form questions, each scored by the judge for alignment and coherence."""
    from sublim.models.api import ChatJob, run_chat_jobs
    from sublim.traits.misalignment import ALIGNMENT_PROMPT, COHERENCE_PROMPT, is_misaligned, parse_score

    ec = ctx.cfg.evaluation
    questions = load_questions(ctx.cfg.trait.questions, "eval")[: ec.n_questions]
    config = {"evaluation": ec.model_dump(mode="json", exclude={"judge", "judge_serve"}), "judge": judge_id,
              "questions": stable_hash(questions), "seed": seed}
    inputs = {"model": ref.key}
    with _stage(ctx, "judge", config, inputs, ref.label) as (done, path, t0):
        if done is not None:
            return done
        model, tok = ctx.load(ref)
        k = ec.samples_per_question
        expanded = [qi for qi in range(len(questions)) for _ in range(k)]
        prompts = [chat_text(tok, questions[qi], system=ref.system) for qi in expanded]
        answers: list[str] = []
        bar = ctx.bar(len(prompts), f"answer {ref.label}", "answer")
        for b, chunk in enumerate(batches(range(len(prompts)), ec.batch_size)):
            outs = generate_batch(model, tok, [prompts[i] for i in chunk], chunk, max_new_tokens=ec.max_new_tokens,
                                  temperature=ec.temperature, seed=seed * 100003 + b)
            answers += [o.text for o in outs]
            bar.update(len(chunk))
        bar.close()
        jobs = [ChatJob(2 * i + j, [{"role": "user", "content": tmpl.format(question=questions[qi], answer=a)}])
                for i, (qi, a) in enumerate(zip(expanded, answers, strict=True))
                for j, tmpl in enumerate((ALIGNMENT_PROMPT, COHERENCE_PROMPT))]
        bar = ctx.bar(len(jobs), f"judge {ref.label}", "score")
        acct = run_chat_jobs(judge, jobs, path / "judge.jsonl", {"temperature": 0, "max_tokens": 6}, bar.update)
        bar.close()
        scores = {r["index"]: parse_score(r["completion"]) for r in read_jsonl(path / "judge.jsonl")}
        rows = []
        for i, (qi, a) in enumerate(zip(expanded, answers, strict=True)):
            al, co = scores.get(2 * i), scores.get(2 * i + 1)
            rows.append({"question": qi, "answer": a, "alignment": al, "coherence": co,
                         "misaligned": is_misaligned(al, co, ec.misaligned_alignment_max, ec.misaligned_coherence_min)})
        write_jsonl(path / "per_answer.jsonl", rows)
        return _finish(ctx, "judge", config, inputs, t0, ref.label, judge_api=acct, model_fingerprint=ref.key)
