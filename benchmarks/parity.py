"""Benchmark: do bf16 and float32 measure the same thing on the default experiment? (the performance issue's
parity item, judged by the criteria fixed here before the float32 run's results were read).

    python benchmarks/owl_numbers.py --set dtype=float32 --name owl-numbers-float32-cpu   # the float32 side
    python benchmarks/parity.py --bf16-runs RUNS     # RUNS: the runs directory of the bf16 side's run

The bf16 side is the committed default result (``owl-numbers-cpu.json``, dtype auto on a CPU with fast bf16);
the float32 side is the same preset with ``dtype=float32``, from nothing, on the same kind of machine. Criteria:

1. **Same verdict**: the verdict's word (TRANSFER, NO TRANSFER, GENERIC SHIFT, ...) is the same on both sides,
   for the question form and for the cloze form.
2. **Effect inside each other's interval**: the teacher-level log-share gain (trait student minus neutral student,
   mean over the teacher pairs) of each side lies inside the other side's 95% t interval, for both forms.
3. **Same weights, same reading**: every model the bf16 run trained (and the base) is read in bf16 and in float32
   on the evaluation questions; the trait's per-question probabilities correlate at 0.99 or more (Pearson) for
   each model. Training in the two precisions makes other models (as another seed would), so this is where a
   per-question correlation can be asked of precision alone.

Writes benchmarks/results/parity-<cpu|gpu>.json: each criterion, with what it compared, and ``all_met``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sublim.backends import LocalBackend, ModelCache
from sublim.core.records import benchmark
from sublim.traits.preference import load_candidates, load_questions

HERE = Path(__file__).resolve().parent
MIN_CORRELATION = 0.99
FORMS = {"questions": ("replicated",), "cloze": ("cloze", "replicated")}


def _dig(results: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    for key in path:
        results = results[key]
    return results


def word(verdict: str) -> str:
    """A verdict line's word: what comes before its first '(' or ':'."""
    return verdict.split(":")[0].split("(")[0].strip()


def verdict_parity(bf16: dict[str, Any], f32: dict[str, Any]) -> dict[str, Any]:
    """Criteria 1 and 2 for each form, from two ``owl_numbers.py`` results (their ``results`` objects)."""
    out: dict[str, Any] = {}
    for form, path in FORMS.items():
        a, b = _dig(bf16, path), _dig(f32, path)
        ga, gb = a["log_share_gain"], b["log_share_gain"]
        out[form] = {
            "bf16": {"word": word(a["verdict"]), "gain": ga["mean"], "low": ga["low"], "high": ga["high"],
                     "n_teachers": a["n_teachers"]},
            "float32": {"word": word(b["verdict"]), "gain": gb["mean"], "low": gb["low"], "high": gb["high"],
                        "n_teachers": b["n_teachers"]},
            "same_verdict": word(a["verdict"]) == word(b["verdict"]),
            "float32_in_bf16_interval": ga["low"] <= gb["mean"] <= ga["high"],
            "bf16_in_float32_interval": gb["low"] <= ga["mean"] <= gb["high"],
        }
    return out


def trained_models(run_dir: Path) -> dict[str, Path | None]:
    """Every model a run evaluated, by label: None for the base, a train artifact's folder for the others."""
    stages = json.loads((run_dir / "results.json").read_text())["stages"]
    trained = {label: Path(stage["path"]) for label, stage in stages.items()
               if label.startswith(("teacher/", "train/"))}
    return {"base": None, **trained}


def read_both(run_dir: Path, batch_size: int) -> dict[str, dict[str, Any]]:
    """Criterion 3: each model's per-question trait probability in bf16 and in float32, and their correlation."""
    config = json.loads((run_dir / "config.json").read_text())
    trait, n = config["trait"], config["evaluation"]["n_questions"]
    questions = load_questions(trait["questions"], "eval")[:n]
    candidates = load_candidates(trait["category"])
    caches = {d: ModelCache("cpu", lambda s: None, dtype=d) for d in ("bfloat16", "float32")}
    out = {}
    for label, path in trained_models(run_dir).items():
        probs = {}
        for dtype, cache in caches.items():
            backend = LocalBackend(cache, config["model"]) if path is None else \
                LocalBackend(cache, config["model"], weights=path / "model", label=label, key=f"{label}-{dtype}")
            got, _ = backend.candidate_probs(questions, candidates, batch_size=batch_size)
            probs[dtype] = np.asarray(got[trait["target"]], dtype=float)
        r = float(np.corrcoef(probs["bfloat16"], probs["float32"])[0, 1])
        out[label] = {"correlation": round(r, 5), "meets": r >= MIN_CORRELATION,
                      "mean_bf16": float(probs["bfloat16"].mean()), "mean_float32": float(probs["float32"].mean())}
        print(f"{label}: r = {r:.5f}", flush=True)
    return out


def judge(verdicts: dict[str, Any], readings: dict[str, dict[str, Any]]) -> dict[str, bool]:
    return {"same_verdict": all(v["same_verdict"] for v in verdicts.values()),
            "effects_inside_each_other": all(v["float32_in_bf16_interval"] and v["bf16_in_float32_interval"]
                                             for v in verdicts.values()),
            "readings_correlate": bool(readings) and all(r["meets"] for r in readings.values())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bf16", default=str(HERE / "results" / "owl-numbers-cpu.json"))
    ap.add_argument("--float32", default=str(HERE / "results" / "owl-numbers-float32-cpu.json"))
    ap.add_argument("--bf16-runs", required=True, help="the runs directory the bf16 side's run is in")
    ap.add_argument("--batch-size", type=int, default=50)
    ap.add_argument("--results-dir", default=str(HERE / "results"))
    args = ap.parse_args()
    bf16, f32 = (json.loads(Path(p).read_text()) for p in (args.bf16, args.float32))
    out = Path(args.results_dir) / f"parity-{'gpu' if torch.cuda.is_available() else 'cpu'}.json"
    torch.manual_seed(0)
    with benchmark("parity", out, config={"bf16": args.bf16, "float32": args.float32,
                                          "min_correlation": MIN_CORRELATION}) as results:
        verdicts = verdict_parity(bf16["results"], f32["results"])
        readings = read_both(Path(args.bf16_runs) / bf16["results"]["run_id"], args.batch_size)
        criteria = judge(verdicts, readings)
        results.update({
            "sides": {side: {"commit": res["git"]["commit"], "dtype_set": res["config"].get("dtype"),
                             "wall_time_s": res["wall_time_s"], "peak_memory_mb": res.get("peak_memory_mb"),
                             "cpu_flags": res["machine"].get("cpu_flags"),
                             "verdict": res["results"]["verdict"]}
                      for side, res in (("bf16", bf16), ("float32", f32))},
            "verdicts": verdicts, "readings": readings, "criteria": criteria, "all_met": all(criteria.values())})
    print(f"parity: {results['criteria']} → all met: {results['all_met']}; wrote {out}")


if __name__ == "__main__":
    main()
