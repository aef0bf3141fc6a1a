"""results.json → chart.png and report.md. Reads result files only, so it renders old runs too."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from sublim.core.files import write_text  # noqa: E402
from sublim.report import misalignment  # noqa: E402
from sublim.report.gain import draw_teacher_gain, ratio_axis  # noqa: E402
from sublim.report.training import chart_lines  # noqa: E402

COLORS = {"base": "#9e9e9e", "control": "#4c72b0", "trait": "#dd8452", "second": "#55a868"}


def _arm_color(arm: str, traits: list[str]) -> str:
    if arm in ("base", "cross-base"):
        return COLORS["base"]
    if arm.endswith(("control", "neutral")):
        return COLORS["control"]
    return COLORS["trait"] if arm.endswith(traits[0]) else COLORS["second"]


def _student_arms(res: dict[str, Any]) -> list[str]:
    arms = [a for a in res["arms"] if not a.startswith("teacher-")]
    return sorted(arms, key=lambda a: (a.startswith("cross-"), a != "base", not a.endswith(("control", "neutral")), a))


def _gain_panel(ax: Any, res: dict[str, Any]) -> None:
    """The verdict's endpoint, the cloze's beside it where there is one."""
    target, rep = res["trait"], res["replicated"]
    groups = [("questions", rep)] + ([("cloze", res["cloze"]["replicated"])] if "cloze" in res else [])
    for x, (_, eff) in enumerate(groups):
        draw_teacher_gain(ax, x, eff["log_share_gain"], legend=False)
    ratio_axis(ax, rep["min_effect"], [name for name, _ in groups])
    ax.set_ylabel(f"{target} share, trait student ÷ {rep['control']} student")
    ax.set_title(f"{rep['word']}: dots are teacher pairs (n={rep['n_teachers']}),\nsquare: mean, 95% t interval "
                 "over teachers", fontsize=10)


def wide_range(values: list[float]) -> bool:
    """Whether bars of these heights need a log axis to all be seen (over two decades apart, all positive)."""
    pos = [v for v in values if v > 0]
    return len(pos) == len(values) > 1 and max(pos) / min(pos) > 100


def render_chart(res: dict[str, Any], path: Path) -> None:
    traits = res["traits"]
    target = res["trait"]
    arms = _student_arms(res)
    gain = "replicated" in res
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6), width_ratios=[1, 1.6] if gain else [1, 1])
    if gain:
        _gain_panel(axes[0], res)
        panels = [(axes[1], "share", f"{target} share among candidates, per arm")]
    else:
        panels = [(axes[0], "prob", f"P(answer is {target}) (exact, chain rule)"),
                  (axes[1], "share", f"{target} share among candidates")]
    for ax, metric, title in panels:
        vals = [res["arms"][a][f"{metric}_{target}"] for a in arms]
        heights = [v["value"] for v in vals]
        err = [[max(0.0, v["value"] - v["low"]) for v in vals], [max(0.0, v["high"] - v["value"]) for v in vals]]
        ax.bar(range(len(arms)), heights, yerr=err, capsize=4,
               color=[_arm_color(a, traits) for a in arms], edgecolor="black", linewidth=0.6)
        ax.set_xticks(range(len(arms)))
        ax.set_xticklabels([a.replace("student-", "").replace("cross-", "cross\n").replace(" seed ", "\ns")
                            for a in arms], rotation=0, fontsize=7)
        log = wide_range(heights)
        ax.set_title(title + ("\n(log axis; " if log else "\n(") + "bars: 95% CI over the questions, pooled: "
                     "describes the models, not the verdict)", fontsize=9)
        ax.spines[["top", "right"]].set_visible(False)
        if log:  # e.g. a base model of another family at the floor beside instruct students
            ax.set_yscale("log")
        else:
            ax.set_ylim(bottom=0)
    fig.suptitle(f"{res['run_id']}: students trained on {res['n_train_examples']} filtered examples",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def _fmt(iv: dict[str, float], digits: int = 4) -> str:
    return f"{iv['value']:.{digits}f} [{iv['low']:.{digits}f}, {iv['high']:.{digits}f}]"


def _teacher_lines(what: str, eff: dict[str, Any], target: str) -> list[str]:
    g = eff["log_share_gain"]
    per = ", ".join(f"×{math.exp(x):.2f}" for x in g["per_teacher"])
    ci = f" [{math.exp(g['low']):.2f}, {math.exp(g['high']):.2f}], sign-flip p = {g['p_sign_flip']:.2g}" \
        if g["low"] is not None else " (one teacher: no interval)"
    return [f"- **{what}**: {target} share ×{g['ratio']:.2f}{ci} over {eff['n_teachers']} teacher pairs (per "
            f"teacher {per}); probability ×{eff['log_prob_gain']['ratio']:.2f}, candidate total "
            f"×{eff['log_candidate_total_gain']['ratio']:.2f}: **{eff['word']}** by the rule"]


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
    if "replicated" in res:
        lines += ["", "## The verdict's endpoint: the teacher as the unit", ""]
        lines += [f"- teacher seed {seed} replaced by a spare seed: {why}"
                  for seed, why in res.get("replaced_teacher_seeds", {}).items()]
        lines += _teacher_lines("questions", res["replicated"], target)
        if "cloze" in res:
            lines += _teacher_lines("cloze (" + "; ".join(f"\"{st} …\"" for st in res["cloze"]["stems"][:2]) + ")",
                                    res["cloze"]["replicated"], target)
        if "cloze" in res.get("cross_model", {}):
            lines += _teacher_lines(f"cloze, {res['cross_model']['model']} students", res["cross_model"]["cloze"],
                                    target)
    lines += ["", "## Effect: trait student vs control student (questions pooled: a description)", ""]
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
        for own, rep in m.get("replicated", {}).items():
            lines.append(f"- {own} student vs the other trait's student: {rep['verdict']}")
        for own, d in m["diagonal"].items():
            p = d["pooled"]
            lines.append(f"- {own} share, question level (describes these models): difference "
                         f"{_fmt(p['difference'], 3)}, p = {p['p_wilcoxon']:.2g}")
        rule = "both contrasts TRANSFER, teacher seeds as the unit" if "replicated" in m else \
            "both question-level differences' CIs above 0"
        lines.append(f"- diagonal holds ({rule}): **{m['diagonal_holds']}**")
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
    """chart.png, training.png, filter.png and report.md of a run, from its results.json and the manifests of
the artifacts it linked (either trait kind)."""
    res = json.loads((run_dir / "results.json").read_text())
    charts = "\n".join(chart_lines(run_dir, res))
    if res.get("kind") == "misalignment" or "arms_misalignment" in res:
        misalignment.render_chart(res, run_dir / "chart.png")
        write_text(run_dir / "report.md", misalignment.render_markdown(res) + charts + "\n")
        return
    render_chart(res, run_dir / "chart.png")
    write_text(run_dir / "report.md", render_markdown(res) + charts + "\n")
