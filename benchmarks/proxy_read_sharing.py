"""Benchmark (a count, no model runs): the tokens one proxy computes to read the audit panel's flagged tokens, one
dataset a read (``datasets_per_read=1``, as the panel's proxy reading began) against every dataset in one read
(``0``, the default since this count), where the rows of a prompt that several datasets answer share its encoding.

    python benchmarks/proxy_read_sharing.py

Uses the panel's committed datasets (benchmarks/data/audit-panel/) and the divergence maps carried beside them,
as the panel's audits take them (the first 1,000 samples of each); the tokenizer is the only model part loaded.
Counts what the read plan runs per pass, padding included: each group's prefix once (after the chat template's
head every row shares, encoded once per model) and each row after its prefix. Every proxy runs the same plan, so
the ratio holds for all of them. Writes benchmarks/results/proxy-read-sharing-cpu.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchlib.panel_maps import DATA, carried_panel

from sublim.backends.local.flagged import ReadPlan, plan_reads
from sublim.backends.local.loading import load_tokenizer
from sublim.core.records import benchmark

HERE = Path(__file__).resolve().parent
PER_PASS = 16  # the reads' default samples per pass under whole models


def computed(plan: ReadPlan) -> dict[str, int]:
    """Tokens the plan runs: per pass, its groups' prefixes (left-padded to the longest, after the shared head)
    and its rows after their prefixes (left-padded to the widest); the tokens the rows hold besides."""
    skip = len(plan.shared) if len(plan.shared) >= 4 else 0
    prefix = suffix = held = 0
    for groups in plan.passes:
        k_of = [k if plan.grouped else 0 for _, k in groups]
        widths = [len(seq) - k for (members, _), k in zip(groups, k_of, strict=True) for n in members
                  for seq, _ in plan.items[n].rows]
        prefix += len(groups) * max(k - skip for k in k_of) if plan.grouped else 0
        suffix += len(widths) * max(widths)
        held += sum(len(seq) - skip for members, _ in groups for n in members for seq, _ in plan.items[n].rows)
    return {"prefix_tokens": prefix, "row_tokens": suffix, "computed": prefix + suffix, "tokens_in_rows": held}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results-dir", default=str(HERE / "results"))
    args = ap.parse_args()
    tok = load_tokenizer("smollm2-135m")
    with benchmark("proxy-read-sharing", Path(args.results_dir) / "proxy-read-sharing-cpu.json",
                   config=vars(args)) as out:
        panel = carried_panel()
        if len(panel) < len(list(DATA.glob("*.jsonl"))):
            raise SystemExit("not every panel dataset has a carried divergence map: carry the panel's maps first")
        apart = {name: computed(plan_reads(tok, [(s, m)], (), "prompt", PER_PASS)) for name, s, m in panel}
        together = plan_reads(tok, [(s, m) for _, s, m in panel], (), "prompt", PER_PASS)
        one_read = computed(together)
        one_at_a_time = sum(r["computed"] for r in apart.values())
        out.update({"datasets": [name for name, _, _ in panel], "samples_per_pass": PER_PASS,
                    "flagged_samples": len(together.items), "distinct_prompts": len(
                        {tuple(it.rows[0][0][:it.rows[0][1]]) for it in together.items}),
                    "per_dataset_apart": apart, "computed_apart": one_at_a_time, "together": one_read,
                    "computed_together": one_read["computed"],
                    "fewer_computed": round(1 - one_read["computed"] / one_at_a_time, 4)})
        print(json.dumps({k: v for k, v in out.items() if k != "per_dataset_apart"}, indent=1))


if __name__ == "__main__":
    main()
