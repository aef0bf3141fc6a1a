"""Benchmark (a count, no model runs): the tokens a prompted ``divergence_shift`` read computes for each audit-panel
dataset, with the read plan's passes packed as before 6bbbd6a (samples in file order) and as now (samples of like
length together), against the tokens the rows hold (what no padding would cost).

    python benchmarks/read_padding.py

Uses the panel's committed datasets (benchmarks/data/audit-panel/) and the divergence maps carried beside them
(benchmarks/data/audit-panel/store/), so it counts only the datasets whose map has been carried; the tokenizer is
the only model part loaded. Writes benchmarks/results/read-padding-cpu.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from benchlib.panel_maps import carried_panel

from sublim.audit.detectors.divergence_shift import induction_texts
from sublim.backends.local.flagged import ReadPlan, plan_reads
from sublim.backends.local.loading import load_tokenizer
from sublim.backends.reads import DivergenceMap
from sublim.core.records import benchmark
from sublim.traits.preference import load_candidates

HERE = Path(__file__).resolve().parent
PER_PASS = 4  # the reads' default samples per pass under inductions


def computed(plan: ReadPlan, order: list[int], k_of: dict[int, int]) -> int:
    """Tokens run when the items, in ``order``, fill passes of PER_PASS: each pass as wide as its longest row (its
    rows after their prefix of ``k_of[item]`` tokens)."""
    total = 0
    for at in range(0, len(order), PER_PASS):
        widths = [len(seq) - k_of[n] for n in order[at:at + PER_PASS] for seq, _ in plan.items[n].rows]
        total += len(widths) * max(widths)
    return total


def count(tok: Any, samples: list[Any], dmap: DivergenceMap, texts: list[str]) -> dict[str, Any]:
    plan = plan_reads(tok, [(samples, dmap)], texts, "prompt", PER_PASS)
    now = [n for groups in plan.passes for members, _ in groups for n in members]
    k_of = {n: k for groups in plan.passes for members, k in groups for n in members}
    held = sum(len(seq) - k_of[n] for n in now for seq, _ in plan.items[n].rows)
    before, after = computed(plan, sorted(now), k_of), computed(plan, now, k_of)
    return {"flagged_samples": len(plan.items), "rows": sum(len(it.rows) for it in plan.items),
            "tokens_in_rows": held, "computed_before": before, "computed_now": after,
            "fewer_computed": round(1 - after / before, 4), "padding_before": round(1 - held / before, 4),
            "padding_now": round(1 - held / after, 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results-dir", default=str(HERE / "results"))
    args = ap.parse_args()
    tok = load_tokenizer("smollm2-135m")
    texts = induction_texts(list(load_candidates("animals")), "animal")
    with benchmark("read-padding", Path(args.results_dir) / "read-padding-cpu.json", config=vars(args)) as out:
        per = {name: count(tok, samples, dmap, texts) for name, samples, dmap in carried_panel()}
        before = sum(r["computed_before"] for r in per.values())
        after = sum(r["computed_now"] for r in per.values())
        out.update({"per_dataset": per, "samples_per_pass": PER_PASS, "inductions": len(texts),
                    "computed_before": before, "computed_now": after,
                    "fewer_computed": round(1 - after / before, 4) if before else None})
        print(json.dumps({k: v for k, v in out.items() if k != "per_dataset"}, indent=1))


if __name__ == "__main__":
    main()
