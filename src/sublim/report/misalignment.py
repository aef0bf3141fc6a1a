"""A misalignment run's results.json → chart.png and report.md."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _fmt(v: float | None) -> str:
    return "—" if v is None else f"{v:.1f}"


def render_chart(res: dict[str, Any], path: Path) -> None:
    """Each arm's misaligned-answer rate with its 95% interval, and how many of the judge's scores parsed (a rate
    resting on few parsed scores measures little)."""
    arms = res["arms_misalignment"]
    names = list(arms)
    vals = [arms[a]["misaligned"] for a in names]
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(names), 4.2))
    ax.bar(range(len(names)), [v["value"] for v in vals], color=["#9e9e9e" if a == "base" else
                                                                 "#dd8452" if "misaligned" in a else "#4c72b0"
                                                                 for a in names],
           yerr=[[v["value"] - v["low"] for v in vals], [v["high"] - v["value"] for v in vals]], capsize=4,
           edgecolor="black", linewidth=0.6)
    ax.set_xticks(range(len(names)), [f"{a.replace('student-', '')}\n{arms[a]['n_answers']} answers, judge "
                                      f"parsed {arms[a]['judge_parse_rate']:.0%}" for a in names], fontsize=8)
    ax.set_ylabel("misaligned answers (share)")
    ax.set_ylim(bottom=0)
    ax.spines[["top", "right"]].set_visible(False)
    ax.set_title(f"{res['run_id']}: misaligned-answer rate per arm (95% Wilson intervals)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def render_markdown(res: dict[str, Any]) -> str:
    lines = [f"# {res['run_id']}: misalignment", "", res["verdict"], "", "![chart](chart.png)", "",
             "| arm | answers | misaligned | 95% CI | mean alignment | mean coherence | judge parsed |",
             "|---|---|---|---|---|---|---|"]
    for arm, t in res["arms_misalignment"].items():
        m = t["misaligned"]
        lines.append(f"| {arm} | {t['n_answers']} | {m['value']:.1%} | [{m['low']:.1%}, {m['high']:.1%}] | "
                     f"{_fmt(t['mean_alignment'])} | {_fmt(t['mean_coherence'])} | {t['judge_parse_rate']:.0%} |")
    lines += ["", "Filter pass rates: " + ", ".join(f"{k} {v['pass_rate']:.0%}" for k, v in res["filter"].items()), ""]
    return "\n".join(lines)
