"""Student probe: train a small student of the reference on the data, and ask it.

The direct answer to "will a student of this model inherit something from this data": the reference fine-tuned on
the dataset (SFT or LoRA, the dose a setting), then every candidate's share among the candidates over the question
set's evaluation questions, as a log-share gain over the reference's own; the same for a student of each contrast
dataset. A student's row is its mean gain per candidate, centred over candidates. The unit is the student (its
seed): the questions describe one trained model and are not independent evidence, so the ranking's interval and
the targeted tests against the panel take students as their rows (with one student per dataset, the panel test is
a rank among the datasets: its smallest p is 1/(datasets) — ``seeds`` students each give the tests more rows).
Each probe (training, then the reading) is one ``probe`` artifact in the store; its weights are not kept.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field
from tqdm.auto import tqdm

from sublim.audit.data import Sample
from sublim.audit.detectors.base import DETECTORS, AuditContext, Detector, DetectorResult, Params, Unavailable
from sublim.audit.detectors.divergence_shift import samples_digest
from sublim.audit.detectors.ranking import ranked
from sublim.core.store import Store, stable_hash
from sublim.train.encode import Example
from sublim.train.settings import TrainSettings


class StudentProbeParams(Params):
    method: Literal["sft", "lora"] = "sft"
    """How each student is trained from the reference."""
    examples: int = Field(1000, ge=1)
    """The dose: each student trains on the first this-many samples of its dataset."""
    epochs: int = Field(1, ge=1)
    lr: float = Field(5e-5, gt=0)
    batch_size: int = Field(8, ge=1)
    seeds: int = Field(1, ge=1)
    """Students per dataset (seeds 0 … n-1): the rows of the ranking and of the panel tests."""
    n_bootstrap: int = Field(1000, ge=1)


def settings_of(params: StudentProbeParams, seed: int) -> TrainSettings:
    return TrainSettings(params.method, params.epochs, params.lr, params.batch_size, warmup_steps=5, seed=seed)


def probe(ctx: AuditContext, samples: Sequence[Sample], params: StudentProbeParams, seed: int, what: str
          ) -> tuple[np.ndarray, float]:
    """One student's probabilities of every candidate per question ([questions, candidates]) and the seconds its
    artifact took to build (training and reading), from the store or made now."""
    ref = ctx.need_model("student probe")
    if ctx.store is None:
        raise Unavailable("student probes are trained and kept in a store: give the audit a runs directory")
    if not ctx.data.questions:
        raise Unavailable("student probes read candidates over a question set's questions (--questions)")
    used = list(samples)[: params.examples]
    cands = dict(ctx.data.candidates)
    settings = settings_of(params, seed)
    config = {"recipe": asdict(settings), "samples": samples_digest(used), "n_samples": len(used),
              "questions": stable_hash(list(ctx.data.questions)), "candidates": cands, "precision": ref.precision}
    inputs = {"model": ref.key}

    def build(path: Path) -> dict[str, Any]:
        steps = -(-len(used) // params.batch_size) * params.epochs
        with tqdm(total=steps, desc=f"student probe ({what}, seed {seed})", unit="step", disable=not ctx.progress,
                  leave=False) as bar:
            log = ref.fine_tune([Example(s.prompt, s.completion, s.system) for s in used], settings,
                                path / "student", lineage={"label": f"student probe of {what}"},
                                on_step=lambda *_: bar.update(1), save_every_s=ctx.save_every_s)
        student = ref.fine_tuned(path / "student", f"probe-{what}-s{seed}", stable_hash(config))
        probs, how = student.candidate_probs(list(ctx.data.questions), cands)
        np.save(path / "probs.npy", np.stack([probs[c] for c in cands], axis=1))
        del student
        shutil.rmtree(path / "student")  # the reading is the artifact: a 135M student is half a gigabyte
        kept = ("steps", "examples", "loss_first", "loss_last", "resumed_from_step", "seconds_before_resume")
        return {"train_log": {k: log[k] for k in kept if k in log},
                "read": how.get("method")}

    art, _ = ctx.store.compute("probe", Store.key("probe", config, inputs), config, inputs, build)
    return np.load(art.file("probs.npy")), float(art.manifest.get("wall_time_s", 0.0))


def log_shares(probs: np.ndarray) -> np.ndarray:
    """Per question, each candidate's log share among the candidates."""
    out: np.ndarray = np.log(probs / probs.sum(1, keepdims=True) + 1e-12)
    return out


def student_probe(ctx: AuditContext, params: StudentProbeParams) -> DetectorResult:
    d = ctx.data
    ref = ctx.need_model("student probe")
    cands = list(d.candidates)
    if not d.questions:
        raise Unavailable("student probes read candidates over a question set's questions (--questions)")
    base, how = ref.candidate_probs(list(d.questions), dict(d.candidates))
    base_shares = log_shares(np.stack([base[c] for c in cands], axis=1))
    seconds = 0.0

    def rows(samples: Sequence[Sample], what: str) -> np.ndarray:
        nonlocal seconds
        out = []
        for seed in range(params.seeds):
            probs, took = probe(ctx, samples, params, seed, what)
            seconds += took
            gain = (log_shares(probs) - base_shares).mean(0)
            out.append(gain - gain.mean())
        return np.array(out)

    lean = rows(d.samples, "dataset")
    contrasts = [rows(c, f"contrast {k}") for k, c in enumerate(d.contrast)]
    res = ranked("student_probe", lean, None, contrasts, cands, params.n_bootstrap, ctx.seed)
    res.sample_scores = np.zeros(len(d.samples))  # a student reads the dataset as a whole
    n = 1 + len(contrasts)
    res.details.update({
        "unit": "student", "students": n * params.seeds, "recipe": asdict(settings_of(params, 0)),
        "examples": min(params.examples, len(d.samples)), "n_questions": len(d.questions), "read": how.get("method"),
        "cost_s": round(seconds, 1),
        "note": f"{params.seeds} student(s) per dataset: the rows of the ranking and the panel tests"
                + (f"; a panel test's smallest p is about 1/{n}" if params.seeds == 1 and contrasts else "")})
    return res


DETECTORS.add("student_probe", Detector(
    "student_probe", student_probe,
    "a student of the reference trained on the data (and one per contrast): which candidates' shares it gains",
    needs_reference=False, params=StudentProbeParams, default=False))
