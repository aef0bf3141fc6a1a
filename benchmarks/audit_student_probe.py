"""Benchmark: what SFT students pick up from the calibration's datasets — does the data carry its teacher's animal?

    python benchmarks/audit_student_probe.py               # seven students, one seed: ~1 h on 2 cores
    python benchmarks/audit_student_probe.py --seeds 0,1   # and seven more

The trait audit's calibration (benchmarks/audit_divergence.py) asks whether a detector can name the animal of the
fine-tuned teacher that wrote a dataset. This is the measurement beside it: train a student on each dataset and ask
it. For each of the calibration's datasets (five fine-tuned animal teachers, the neutral teacher, the base model's
own data as the control; every candidate's words banned by the filter; the same cached pipeline stages) an SFT
student of the reference on the first --examples filtered samples (the defence table's recipe, SFT and lr 5e-5, but
one epoch over 1,000 samples: 125 steps, more than the defence table's 75; --seeds, gains averaged), then each
student's exact probability of every candidate over the evaluation questions. Per dataset, each candidate's gain is
the mean over questions of log share(student) − log share(control student) (its share among the 20 candidates, so a
student that names animals more or less often moves no candidate), ranked: alone (centred over candidates) and
against the other datasets' students (each candidate's gain minus its mean gain over the other datasets: what this
data teaches that the others do not); a bootstrap over questions for the top candidate's margin over the runner-up.
Students are stages in the store: a crash loses no training. Writes
benchmarks/results/audit-student-probe-<cpu|gpu>.json and a PNG of the dataset × candidate gains.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sublim.backends.local.throughput import throughput
from sublim.core.config import load_config
from sublim.core.files import read_jsonl
from sublim.core.records import benchmark
from sublim.core.store import Store
from sublim.experiment.context import Context
from sublim.experiment.datasets import source_data
from sublim.experiment.stages.evaluate import evaluation
from sublim.experiment.stages.train import student
from sublim.traits.preference import load_candidates

HERE = Path(__file__).resolve().parent
ANIMALS = ["owl", "eagle", "wolf", "cat", "lion"]
SOURCES = ["control", *ANIMALS, "neutral"]
AUDITED = [*ANIMALS, "neutral"]


def log_shares(rows: list[dict[str, Any]], cands: list[str]) -> np.ndarray:
    """Questions × candidates: log of each candidate's share among the candidates."""
    return np.log(np.array([[r["share"][c] for c in cands] for r in rows]) + 1e-12)


def ranked(gain_q: np.ndarray, cands: list[str], n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """A ranking from per-question gains (questions × candidates), centred over candidates; the top candidate's
    margin over the runner-up with a bootstrap interval over questions."""
    mean = gain_q.mean(0) - gain_q.mean()
    order = np.argsort(-mean)
    top, second = int(order[0]), int(order[1])
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        g = gain_q[rng.integers(0, len(gain_q), len(gain_q))].mean(0)
        boots.append(g[top] - g[second])
    return {"ranking": [{"trait": cands[i], "lean": round(float(mean[i]), 5)} for i in order],
            "top": cands[top], "margin": round(float(mean[top] - mean[second]), 5),
            "margin_ci": [round(float(x), 5) for x in np.percentile(boots, [2.5, 97.5])]}


def chart(gains: dict[str, np.ndarray], cands: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(gains)
    grid = np.array([gains[n] - gains[n].mean() for n in names])
    fig, ax = plt.subplots(figsize=(1.2 + 0.45 * len(cands), 1.4 + 0.5 * len(names)))
    lim = float(np.abs(grid).max()) or 1.0
    im = ax.imshow(grid, cmap="RdBu_r", vmin=-lim, vmax=lim)
    ax.set_xticks(range(len(cands)), cands, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), [f"{n} teacher's data" for n in names])
    for i, n in enumerate(names):
        j = int(np.argmax(grid[i]))
        ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, lw=2, ec="black"))
        if n in cands:
            k = cands.index(n)
            ax.add_patch(plt.Rectangle((k - 0.5, i - 0.5), 1, 1, fill=False, lw=1.5, ec="green", ls="--"))
    fig.colorbar(im, ax=ax, label="log share gain over the control student (centred)")
    ax.set_title("SFT students on each dataset: what they pick up (black: first; green: the teacher's animal)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def context(args: argparse.Namespace, name: str) -> Context:
    """The experiment of one source: its prompts (--prompts, or --prompts-for), the students' recipe, --set."""
    more = {k: int(v) for k, v in (x.split("=") for x in filter(None, args.prompts_for.split(",")))}
    sets = ["student.method=sft", "student.lr=5e-5", "student.epochs=1", "evaluation.samples_per_question=0",
            *args.set]
    n = more.get(name, args.prompts)
    return Context(load_config("owl-numbers", [f"prompts.n={n}", f"generation.until_kept={args.kept}", *sets]),
                   Store(Path(args.runs_dir)))


def one_student(args: argparse.Namespace, name: str, seed: int, cands_words: dict[str, list[str]],
                banned: list[str]) -> tuple[int, list[dict[str, Any]]]:
    """An SFT student on the first --examples filtered samples of ``name``'s data: how many samples the filter
    kept, and the student's evaluation per question."""
    ctx = context(args, name)
    source, art = source_data(ctx, name, "" if name == "control" else name, banned)
    kept = art.manifest["filter"]["kept"]
    if kept < args.examples:
        raise SystemExit(f"{name}: {kept} filtered samples, fewer than --examples {args.examples}; "
                         f"give it more prompts (--prompts-for {name}=N)")
    base = ctx.local(ctx.cfg.model)
    trained = student(ctx, base, art, args.examples, seed, source, f"student on {name} (seed {seed})")
    ev = evaluation(ctx, trained, cands_words, seed)
    return kept, read_jsonl(ev.file("per_question.jsonl"))


def students_phase(args: argparse.Namespace, seeds: list[int], cands_words: dict[str, list[str]]
                   ) -> tuple[dict[str, Any], dict[int, dict[str, np.ndarray]]]:
    """Every source's student for every seed: each source's kept samples and wall times, and per seed each audited
    dataset's gains over the control student (questions × candidates)."""
    cands = list(cands_words)
    banned = [w for words in cands_words.values() for w in words]
    info: dict[str, Any] = {}
    per_seed: dict[int, dict[str, np.ndarray]] = {}  # seed → dataset → questions × candidates gains
    for seed in seeds:
        rows: dict[str, list[dict[str, Any]]] = {}
        for name in SOURCES:
            t0 = time.time()
            kept, rows[name] = one_student(args, name, seed, cands_words, banned)
            info.setdefault(name, {"kept": kept, "wall_time_s": {}})["wall_time_s"][str(seed)] = round(
                time.time() - t0, 1)
            print(f"{name}, seed {seed}: student trained and evaluated ({time.time() - t0:.0f} s)", flush=True)
        ctrl = log_shares(rows["control"], cands)
        per_seed[seed] = {n: log_shares(rows[n], cands) - ctrl for n in AUDITED}
    return info, per_seed


def rankings(gain_q: dict[str, np.ndarray], cands: list[str]) -> dict[str, Any]:
    """Each audited dataset's ranking alone and against the other datasets; the animals' top-1 and top-3 counts."""
    per: dict[str, Any] = {}
    for n in AUDITED:
        others = [o for o in AUDITED if o != n]
        alone = ranked(gain_q[n], cands)
        vs = ranked(gain_q[n] - np.mean([gain_q[o] for o in others], axis=0), cands)
        per[n] = {"alone": alone, "vs_others": vs}
        if n != "neutral":
            for r in (alone, vs):
                r["rank_of_true"] = [x["trait"] for x in r["ranking"]].index(n) + 1
    return {
        "per_dataset": per,
        "top1_alone": sum(per[a]["alone"]["rank_of_true"] == 1 for a in ANIMALS),
        "top3_alone": sum(per[a]["alone"]["rank_of_true"] <= 3 for a in ANIMALS),
        "top1_vs_others": sum(per[a]["vs_others"]["rank_of_true"] == 1 for a in ANIMALS),
        "top3_vs_others": sum(per[a]["vs_others"]["rank_of_true"] <= 3 for a in ANIMALS),
        "true_animal_gain": {a: round(float(gain_q[a].mean(0)[cands.index(a)]), 5) for a in ANIMALS},
    }


def each_seed(per_seed: dict[int, dict[str, np.ndarray]], cands: list[str]) -> dict[str, Any]:
    """Each seed's rankings alone (its counts and each dataset's first candidate)."""
    return {str(s): {k: v for k, v in rankings(g, cands).items() if k != "per_dataset"}
            | {"tops": {n: r["alone"]["top"] for n, r in rankings(g, cands)["per_dataset"].items()}}
            for s, g in per_seed.items()}


def report(out: dict[str, Any]) -> None:
    for n, r in out["per_dataset"].items():
        print(f"  {n}: first alone {r['alone']['top']} (true rank {r['alone'].get('rank_of_true')}), against the "
              f"others {r['vs_others']['top']} (true rank {r['vs_others'].get('rank_of_true')})", flush=True)
    print(f"top-1 alone {out['top1_alone']}/5, against the others {out['top1_vs_others']}/5", flush=True)


def arguments() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs-dir", default="runs")
    ap.add_argument("--prompts", type=int, default=4000)
    ap.add_argument("--kept", type=int, default=1000)
    ap.add_argument("--prompts-for", default="cat=9000", help="sources given more prompts (NAME=N,...)")
    ap.add_argument("--examples", type=int, default=1000, help="samples each student trains on (the same for all)")
    ap.add_argument("--seeds", default="0", help="student seeds (comma-separated); gains averaged over them")
    ap.add_argument("--set", action="append", default=[], help="more config overrides (KEY=VALUE)")
    ap.add_argument("--name", default="audit-student-probe")
    ap.add_argument("--results-dir", default=str(HERE / "results"))
    return ap.parse_args()


def main() -> None:
    args = arguments()
    results_dir = Path(args.results_dir)
    kind = "gpu" if torch.cuda.is_available() else "cpu"
    with benchmark("audit-student-probe", results_dir / f"{args.name}-{kind}.json", config=vars(args)) as out:
        cfg = context(args, "control").cfg
        cands_words = load_candidates(cfg.trait.category)
        cands = list(cands_words)
        seeds = [int(x) for x in args.seeds.split(",")]
        info, per_seed = students_phase(args, seeds, cands_words)
        gain_q = {n: np.mean([per_seed[s][n] for s in seeds], axis=0) for n in AUDITED}
        out.update({
            "examples": args.examples,
            "seeds": seeds,
            "recipe": cfg.student.recipe(),
            "n_questions": len(gain_q["owl"]),
            "datasets": info,
            **rankings(gain_q, cands),
            "each_seed": each_seed(per_seed, cands) if len(seeds) > 1 else None,
            "throughput": throughput(),
        })
        report(out)
        chart({n: gain_q[n].mean(0) for n in AUDITED}, cands, results_dir / f"{args.name}-{kind}.png")
    print(f"wrote {results_dir / f'{args.name}-{kind}.json'}")


if __name__ == "__main__":
    main()
