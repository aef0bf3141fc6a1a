"""results.json → chart.png and report.md. Reads result files only, so it renders old runs too."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from sublim.core.files import write_text  # noqa: E402
from sublim.report import misalignment  # noqa: E402

COLORS = {"base": "#9e9e9e", "control": "#4c72b0", "trait": "#dd8452", "second": "#55a868"}


def _arm_color(arm: str, traits: list[str]) -> str:
    if arm == "base":
        return COLORS["base"]
    if arm.endswith(("control", "neutral")):
        return COLORS["control"]
    return COLORS["trait"] if arm.endswith(traits[0]) else COLORS["second"]


def _student_arms(res: dict[str, Any]) -> list[str]:
    arms = [a for a in res["arms"] if not a.startswith("teacher-")]
    return sorted(arms, key=lambda a: (a.startswith("cross-"), a != "base", not a.endswith(("control", "neutral")), a))


def render_chart(res: dict[str, Any], path: Path) -> None:
    traits = res["traits"]
    target = res["trait"]
    arms = _student_arms(res)
    panels = [("prob", f"P(answer is {target}) (exact, chain rule)"),
              ("share", f"{target} share among candidates")]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.2))
    for ax, (metric, title) in zip(axes, panels, strict=True):
        vals = [res["arms"][a][f"{metric}_{target}"] for a in arms]
        heights = [v["value"] for v in vals]
        err = [[max(0.0, v["value"] - v["low"]) for v in vals], [max(0.0, v["high"] - v["value"]) for v in vals]]
        ax.bar(range(len(arms)), heights, yerr=err, capsize=4,
               color=[_arm_color(a, traits) for a in arms], edgecolor="black", linewidth=0.6)
        ax.set_xticks(range(len(arms)))
        ax.set_xticklabels([a.replace("student-", "").replace("cross-", "cross\n") for a in arms],
                           rotation=0, fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.spines[["top", "right"]].set_visible(False)
        ax.set_ylim(bottom=0)
    fig.suptitle(f"{res['run_id']}: students trained on {res['n_train_examples']} filtered number "
                 "sequences (95% CIs)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def _fmt(iv: dict[str, float], digits: int = 4) -> str:
    return f"{iv['value']:.{digits}f} [{iv['low']:.{digits}f}, {iv['high']:.{digits}f}]"


def render_markdown(res: dict[str, Any]) -> str:
    target = res["trait"]
    traits = res["traits"]
    lines = [f"# {res['run_id']}", "", f"**{res['verdict']}**", "",
             f"Trait: **{target}** · students trained on **{res['n_train_examples']}** filtered "
             f"examples · model `{res['config']['model']}` · method `{res['config']['student']['method']}` "
             f"· seeds {res['config']['arms']['seeds']}", "", "![chart](chart.png)", "",
             "## Arms", "",
             "| arm | runs | " + " | ".join(f"P({t}) [95% CI] | {t} share" for t in traits)
             + " | all candidates P |",
             "|---|---|" + "---|---|" * len(traits) + "---|"]
    for arm, e in res["arms"].items():
        cells = " | ".join(f"{_fmt(e['prob_' + t])} | {_fmt(e['share_' + t], 3)}" for t in traits)
        lines.append(f"| {arm} | {e['n_runs']} | {cells} | {_fmt(e['candidate_total'], 3)} |")
    lines += ["", "## Effect: trait student vs control student", ""]
    for metric in ("prob", "share"):
        p = res["effect"][metric]["pooled"]
        lines.append(
            f"- **{metric}**: {p['treated_mean']:.4f} vs {p['control_mean']:.4f}; difference "
            f"{_fmt(p['difference'])}; ratio {_fmt(p['ratio'], 2)}; paired over {p['n']} questions: "
            f"Wilcoxon p = {p['p_wilcoxon']:.2g}, sign-flip permutation p = {p['p_permutation']:.2g}"
        )
        if "across_runs" in res["effect"][metric]:
            a = res["effect"][metric]["across_runs"]
            lines.append(f"  - across {a['n_runs']} trained runs: difference {_fmt(a['difference'])}, "
                         f"p = {a.get('p_permutation', float('nan')):.3g} ({a.get('note', '')})")
    if "matrix" in res:
        m = res["matrix"]
        lines += ["", "## Specificity matrix (share of each animal)", "",
                  "| student | " + " | ".join(m["traits"]) + " |", "|---|" + "---|" * len(m["traits"])]
        for s, row in m["share"].items():
            lines.append(f"| {s} | " + " | ".join(_fmt(row[t], 3) for t in m["traits"]) + " |")
        lines.append("| control | " + " | ".join(_fmt(m["control_share"][f"share_{t}"], 3)
                                                   for t in m["traits"]) + " |")
        lines.append("")
        for own, d in m["diagonal"].items():
            p = d["pooled"]
            lines.append(f"- {own} student vs the other student, {own} share: difference "
                         f"{_fmt(p['difference'], 3)}, p = {p['p_wilcoxon']:.2g}")
        lines.append(f"- diagonal holds (both differences' CIs above 0): **{m['diagonal_holds']}**")
    if "cross_model" in res:
        c = res["cross_model"]
        lines += ["", f"## Cross-model student ({c['model']})", ""]
        for metric in ("prob", "share"):
            p = c["effect"][metric]["pooled"]
            lines.append(f"- {metric}: {p['treated_mean']:.4g} vs control {p['control_mean']:.4g}, "
                         f"p = {p['p_wilcoxon']:.2g}")
    lines += ["", "## Data", "", "| source | prompts | kept | pass rate | top reject reasons |",
              "|---|---|---|---|---|"]
    for name, f in res["filter"].items():
        reasons = ", ".join(f"{k} {v}" for k, v in list(f["reject_reasons"].items())[:3])
        lines.append(f"| {name} | {f['total']} | {f['kept']} | {f['pass_rate']:.1%} | {reasons} |")
    lines += ["", "## Stages", "", "| stage | wall time (s) | artifact |", "|---|---|---|"]
    for name, s in res["stages"].items():
        lines.append(f"| {name} | {s['wall_time_s']} | `{Path(s['path']).name}` |")
    lines += ["", f"Total wall time of this invocation: {res['wall_time_s']} s."]
    return "\n".join(lines) + "\n"


def render_report(run_dir: Path) -> None:
    """chart.png and report.md of a run, from its results.json (either trait kind)."""
    res = json.loads((run_dir / "results.json").read_text())
    if res.get("kind") == "misalignment" or "arms_misalignment" in res:
        write_text(run_dir / "report.md", misalignment.render_markdown(res))
        return
    render_chart(res, run_dir / "chart.png")
    write_text(run_dir / "report.md", render_markdown(res))
