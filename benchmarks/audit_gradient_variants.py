"""Benchmark: does the gradient-alignment ranking find the trait in another optimizer's geometry?

    python benchmarks/audit_gradient_variants.py      # after benchmarks/audit.py (same cached data)

The `gradient_alignment` detector scores ∇L_data · ∇L_c, the first-order effect of a plain gradient step.
Students are trained with Adam, whose step is roughly mean(g) / rms(g) per coordinate, so the trait a
student picks up may show in that geometry instead. For each dataset of benchmarks/audit.py (fine-tuned
teachers for five animals, the system-prompted owl, the base model's answers) this accumulates the
mean and mean square of its chunk gradients (chunks of 8, one backward pass each) and dots ∇L_c with:
plain mean(g); mean(g) / rms(g) with the dataset's own rms (Adam on it), the reference answers' rms, or
the rms pooled over all datasets; sign(mean(g)). Each dataset's scores minus the reference answers'
(or minus the other teachers' mean) rank the 20 candidates. Raw scores are cached in
runs/audit-bench; results/audit-gradient-variants-<cpu|gpu>.json holds the ranks.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch

from sublim.audit.gradients import TraitGradients
from sublim.backends.local.throughput import throughput
from sublim.core.config import load_config
from sublim.core.files import write_json
from sublim.core.records import envelope, git_state
from sublim.core.store import Store
from sublim.experiment.context import Context
from sublim.experiment.datasets import teacher_datasets
from sublim.traits.preference import load_candidates, load_questions

HERE = Path(__file__).resolve().parent
ANIMALS = ["owl", "dolphin", "eagle", "wolf", "cat"]
VARIANTS = ("plain", "adam_own", "adam_ref", "adam_pooled", "sign")


def raw_scores(runs: Path) -> tuple[list[str], dict[str, dict[str, list[float]]], float]:
    cfg = load_config("owl-numbers", ["prompts.n=800"])
    ctx = Context(cfg, Store(runs))
    cands = load_candidates(cfg.trait.category)
    data = teacher_datasets(ctx, ANIMALS, ["owl"])
    half = {k: ([s for s in v if s.line % 2 == 0], [s for s in v if s.line % 2 == 1]) for k, v in data.items()}
    sets = {"reference": half["control"][0], "negative": half["control"][1],
            **{a: half[a][1] for a in [*ANIMALS, "owl-system"]}}
    digest = hashlib.sha256(json.dumps({k: [(s.prompt, s.completion) for s in v] for k, v in sets.items()})
                            .encode()).hexdigest()[:16]
    cache = runs / "audit-bench" / f"gradient-variants-{digest}.json"
    if cache.exists():
        got = json.loads(cache.read_text())
        return got["names"], got["scores"], got.get("wall_time_s", 0.0)
    t0 = time.time()
    model, tok = ctx.local(cfg.model).torch_model()
    tg = TraitGradients(model, tok, cands, load_questions(cfg.trait.questions, "eval"))
    means, sqs = {}, {}
    for name, samples in sets.items():
        total = sq = None
        k = 0
        for g in tg.chunk_gradients([(s.prompt, s.completion) for s in samples]):
            total = g.clone() if total is None else total.add_(g)
            sq = g * g if sq is None else sq.add_(g * g)
            k += 1
        assert total is not None and sq is not None
        means[name], sqs[name] = total / k, sq / k
        print(f"{name}: {k} chunks, {time.time() - t0:.0f} s", flush=True)
    pooled = sum(sqs.values(), torch.zeros_like(next(iter(sqs.values())))) / len(sqs)

    def dot(v: torch.Tensor) -> list[float]:
        return [float(x) for x in (tg.directions @ v.to(torch.bfloat16)).float()]

    scores = {name: {"plain": dot(m), "adam_own": dot(m / (sqs[name].sqrt() + 1e-8)),
                     "adam_ref": dot(m / (sqs["reference"].sqrt() + 1e-8)),
                     "adam_pooled": dot(m / (pooled.sqrt() + 1e-8)), "sign": dot(torch.sign(m))}
              for name, m in means.items()}
    wall = round(time.time() - t0, 1)
    cache.write_text(json.dumps({"names": list(cands), "scores": scores, "wall_time_s": wall}))
    return list(cands), scores, wall


def main() -> None:
    started, git = time.time(), git_state()
    names, scores, wall = raw_scores(Path("runs"))
    out: dict[str, object] = {"candidates": len(names), "gradient_wall_time_s": wall}
    for var in VARIANTS:
        rows = {}
        for src in [*ANIMALS, "owl-system", "negative"]:
            trait = src.removesuffix("-system")
            mine = np.array(scores[src][var])
            row = {}
            against = {"vs_base_answers": np.array(scores["reference"][var])}
            if trait in ANIMALS:
                against["vs_other_teachers"] = np.mean([scores[o][var] for o in ANIMALS if o != trait], axis=0)
            for label, base in against.items():
                order = list(np.argsort(-(mine - base)))
                row[label] = {"top": names[order[0]]}
                if trait in names:
                    row[label]["rank_of_true"] = order.index(names.index(trait)) + 1
            rows[src] = row
        top1 = {label: float(np.mean([rows[a][label]["top"] == a for a in ANIMALS]))
                for label in ("vs_base_answers", "vs_other_teachers")}
        out[var] = {"top1_accuracy": top1, "datasets": rows}
        print(var, top1, {a: rows[a]["vs_base_answers"].get("rank_of_true") for a in ANIMALS})
    dest = HERE / "results" / f"audit-gradient-variants-{'gpu' if torch.cuda.is_available() else 'cpu'}.json"
    write_json(dest, envelope("audit-gradient-variants", {**out, "throughput": throughput()},
                              config={"animals": ANIMALS, "prompts": 800},
                              started=started, git=git))
    print(f"wrote {dest}")


if __name__ == "__main__":
    main()
