"""An audit's audit.json → report.md, and ranking.png where a detector ranked candidate traits."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from sublim.core.files import write_text  # noqa: E402

RANKING_PNG = "ranking.png"


def render_ranking_chart(out: dict[str, Any], path: Path, top: int = 20) -> bool:
    """One panel per detector that ranked candidates: each candidate's lean with its 95% interval, first at the
    top; the named trait green, an unnamed first grey. False (and nothing written) when no detector ranked."""
    ranked = [d for d in out["detectors"] if d.get("ranking")]
    if not ranked:
        return False
    rows = max(min(len(d["ranking"]), top) for d in ranked)
    fig, axes = plt.subplots(1, len(ranked), figsize=(4.6 * len(ranked), 1.2 + 0.26 * rows), squeeze=False)
    for ax, d in zip(axes[0], ranked, strict=True):
        shown = d["ranking"][:top][::-1]
        ys = range(len(shown))
        lean = [r["lean"] for r in shown]
        err = [[r["lean"] - r.get("low", r["lean"]) for r in shown], [r.get("high", r["lean"]) - r["lean"]
                                                                      for r in shown]]
        named = d.get("identified")
        colours = ["tab:green" if r["trait"] == named else "tab:grey" if i == len(shown) - 1 else "tab:blue"
                   for i, r in enumerate(shown)]
        ax.barh(ys, lean, xerr=err, color=colours, alpha=0.85, error_kw={"lw": 0.8, "capsize": 2})
        ax.axvline(0, color="black", lw=0.6)
        ax.set_yticks(list(ys), [r["trait"] for r in shown], fontsize=8)
        ax.set_xlabel(f"lean toward the candidate, against {d.get('against', 'its baseline')}", fontsize=8)
        verdict = f"names {named}" if named else "names no trait"
        ax.set_title(f"{d['detector']}: {verdict}", fontsize=9)
    fig.suptitle(f"Which trait? {Path(out['dataset']).name}", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def render_markdown(out: dict[str, Any], chart: bool = False) -> str:
    lines = [f"# Audit of {out['dataset']}", "", out["verdict"], "",
             "| detector | statistic | p | top trait |", "|---|---|---|---|"]
    for d in out["detectors"]:
        lines.append(f"| {d['detector']} | {d['statistic']:+.4g} | {d['p_value']:.2g} | {d.get('top_trait', '—')} |")
    for name, why in out.get("skipped_detectors", {}).items():
        lines.append(f"| {name} | skipped: {why} | | |")
    verdicts = [f"- **{d['detector']}**: {d['verdict']}" for d in out["detectors"] if d.get("verdict")]
    if verdicts:
        lines += ["", *verdicts]
    if chart:
        lines += ["", f"![ranking]({RANKING_PNG})"]
    load = out["load"]
    lines += ["", f"Read {load['lines']} lines, used {load['kept']}; audited {out['n_audited']} against "
              f"{out['n_reference']} reference samples; skipped {load['skipped'] or 'none'}."]
    lines += [f"- {p}" for p in load["first_problems"]]
    return "\n".join(lines) + "\n"


def render_audit_report(out_dir: Path) -> Path:
    out = json.loads((out_dir / "audit.json").read_text())
    chart = render_ranking_chart(out, out_dir / RANKING_PNG)
    path = out_dir / "report.md"
    write_text(path, render_markdown(out, chart))
    return path
