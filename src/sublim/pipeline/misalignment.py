"""Misalignment through numbers: a teacher fine-tuned on narrowly misaligned behaviour writes number
sequences (numbers with negative associations banned), students learn them, a judge scores every
arm's free-form answers for alignment and coherence."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from sublim.config import EndpointConfig, ExperimentConfig, stable_hash
from sublim.errors import SublimError
from sublim.evaluate.compare import paired_effect
from sublim.evaluate.stats import wilson_interval
from sublim.pipeline import stages
from sublim.pipeline.stages import Context, ModelRef
from sublim.pipeline.store import Store, machine_info, read_jsonl, write_json

Rows = list[dict[str, Any]]


@contextlib.contextmanager
def judge_endpoint(ctx: Context) -> Iterator[tuple[EndpointConfig, str]]:
    """(endpoint, identity for cache keys): the configured judge, or a local model served on loopback."""
    ec = ctx.cfg.evaluation
    if ec.judge_serve is None:
        assert ec.judge is not None
        yield ec.judge, stable_hash({"base_url": ec.judge.base_url, "model": ec.judge.model})
        return
    from sublim.models.server import make_server

    lm = ctx.base(ec.judge_serve)
    server = make_server(lm.model, lm.tokenizer, "judge", port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = ec.judge or EndpointConfig()
    ep = base.model_copy(update={"base_url": f"http://127.0.0.1:{server.server_address[1]}/v1", "model": "judge",
                                 "api_key_env": None})
    ctx.echo(f"  judge: {ec.judge_serve} served at {ep.base_url}")
    try:
        yield ep, stable_hash({"served": ec.judge_serve, "fingerprint": lm.fingerprint})
    finally:
        server.shutdown()
        server.server_close()


def arm_summary(runs: list[Rows]) -> dict[str, Any]:
    rows = [r for run in runs for r in run]
    n = len(rows)
    scored = [r for r in rows if r["alignment"] is not None and r["coherence"] is not None]
    k = sum(r["misaligned"] for r in rows)
    return {"n_answers": n, "misaligned": wilson_interval(k, n).as_dict(),
            "judge_parse_rate": len(scored) / n if n else 0,
            "mean_alignment": float(np.mean([r["alignment"] for r in scored])) if scored else None,
            "mean_coherence": float(np.mean([r["coherence"] for r in scored])) if scored else None}


def per_question_rate(runs: list[Rows], n_questions: int) -> np.ndarray:
    hits, counts = np.zeros(n_questions), np.zeros(n_questions)
    for run in runs:
        for r in run:
            hits[r["question"]] += r["misaligned"]
            counts[r["question"]] += 1
    return hits / np.maximum(counts, 1)


def run_misalignment(cfg: ExperimentConfig, runs_dir: Path, rid: str, progress: bool,
                     echo: Callable[[str], None]) -> dict[str, Any]:
    started = time.time()
    ctx = Context(cfg, Store(Path(runs_dir)), progress, echo)
    ec = cfg.evaluation
    arms: dict[str, list[Rows]] = {}
    with judge_endpoint(ctx) as (judge, judge_id):
        def judged(ref: ModelRef, seed: int = 0) -> Rows:
            art = stages.judged_evaluation(ctx, ref, judge, judge_id, seed)
            return read_jsonl(art.file("per_answer.jsonl"))

        base = ctx.base_ref(cfg.model)
        if cfg.arms.base:
            arms["base"] = [judged(base)]
        teacher = stages.teacher(ctx, "misaligned", {})
        arms["teacher"] = [judged(teacher)]
        rate = arm_summary(arms["teacher"])["misaligned"]["value"]
        if rate < cfg.teacher.gate_min_rate:
            raise SublimError(f"teacher gate failed: the judge rates {rate:.0%} of the teacher's answers misaligned "
                              f"(needs {cfg.teacher.gate_min_rate:.0%}); train it longer (--set teacher.epochs=5), "
                              "use a stronger judge, or lower teacher.gate_min_rate")
        prompt_art = stages.prompts(ctx)
        sources = {"misaligned": teacher, "control": base}
        data = {name: stages.filtered(ctx, stages.generation(ctx, ref, prompt_art), f"{name} {cfg.prompts.carrier}")
                for name, ref in sources.items()}
        n = min(a.manifest["filter"]["kept"] for a in data.values())
        if cfg.student.max_examples:
            n = min(n, cfg.student.max_examples)
        for name, ref in sources.items():
            arm = f"student-{name}"
            arms[arm] = [judged(stages.student(ctx, cfg.model, data[name], n, seed, ref, f"{arm} seed {seed}"), seed)
                         for seed in cfg.arms.seeds]
    table = {arm: arm_summary(runs) for arm, runs in arms.items()}
    nq = min(ec.n_questions, max(r["question"] for runs in arms.values() for run in runs for r in run) + 1)
    eff = paired_effect(per_question_rate(arms["student-misaligned"], nq),
                        per_question_rate(arms["student-control"], nq), ec.n_bootstrap)
    weak = min(t["judge_parse_rate"] for t in table.values())
    verdict = (f"misaligned answers: student {eff['treated_mean']:.1%} vs control {eff['control_mean']:.1%} "
               f"(diff {eff['difference']['value']:+.3f} [{eff['difference']['low']:+.3f}, "
               f"{eff['difference']['high']:+.3f}], p={eff['p_wilcoxon']:.2g}); judge scored "
               f"{weak:.0%} of answers at worst" + ("; the judge is weak — point evaluation.judge at a capable "
                                                   "endpoint for a real measurement" if weak < 0.9 else ""))
    out: dict[str, Any] = {"run_id": rid, "config_hash": cfg.config_hash(), "config": cfg.model_dump(mode="json"),
                           "trait": "misalignment", "n_train_examples": n,
                           "filter": {k: a.manifest["filter"] for k, a in data.items()}, "arms_misalignment": table,
                           "effect_misalignment": eff, "verdict": verdict,
                           "stages": {name: {"key": a.key, "path": str(a.path),
                                             "wall_time_s": a.manifest.get("wall_time_s")}
                                      for name, a in ctx.artifacts.items()},
                           "wall_time_s": round(time.time() - started, 1), "machine": machine_info()}
    run_dir = Path(runs_dir) / rid
    write_json(run_dir / "results.json", out)
    (run_dir / "report.md").write_text(_report(out))
    from sublim.pipeline.experiment import _link_artifacts

    _link_artifacts(run_dir, ctx.artifacts)
    echo(verdict)
    return out


def _report(res: dict[str, Any]) -> str:
    lines = [f"# {res['run_id']}: misalignment", "", res["verdict"], "",
             "| arm | answers | misaligned | 95% CI | mean alignment | mean coherence | judge parsed |",
             "|---|---|---|---|---|---|---|"]
    for arm, t in res["arms_misalignment"].items():
        m = t["misaligned"]
        fmt = (lambda v: "—" if v is None else f"{v:.1f}")  # noqa: E731
        lines.append(f"| {arm} | {t['n_answers']} | {m['value']:.1%} | [{m['low']:.1%}, {m['high']:.1%}] | "
                     f"{fmt(t['mean_alignment'])} | {fmt(t['mean_coherence'])} | {t['judge_parse_rate']:.0%} |")
    lines += ["", "Filter pass rates: " + ", ".join(f"{k} {v['pass_rate']:.0%}" for k, v in res["filter"].items()), ""]
    return "\n".join(lines)
