"""An audit's audit.json → report.md, and ranking.png where a detector ranked candidate traits."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from sublim.core.files import write_text  # noqa: E402

RANKING_PNG = "ranking.png"
PANEL_PNG = "panel.png"


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


def panel_names(out: dict[str, Any]) -> list[str]:
    """The panel's rows: the audited dataset, then each contrast dataset, by file name."""
    return [f"{Path(out['dataset']).name} (audited)", *(Path(c).name for c in out["config"].get("contrasts", []))]


def render_panel_chart(out: dict[str, Any], path: Path) -> bool:
    """One heat map per detector that read a panel: dataset x candidate mean lean, the audited dataset on top; a
    box where a candidate stands out. False (and nothing written) without a panel."""
    panel = out.get("targeted")
    if not panel:
        return False
    detectors = list(dict.fromkeys(t["detector"] for t in panel["tests"]))
    names = panel_names(out)
    width = 2.5 + 0.55 * len(panel["tests"]) / len(detectors)
    fig, axes = plt.subplots(len(detectors), 1, squeeze=False, figsize=(width, 1.4 + 1.1 * len(names) * len(detectors)))
    for ax, det in zip(axes[:, 0], detectors, strict=True):
        tests = [t for t in panel["tests"] if t["detector"] == det]
        grid = np.array([[t["lean"], *t["panel_leans"]] for t in tests]).T  # [datasets, candidates]
        lim = float(np.abs(grid).max()) or 1.0
        im = ax.imshow(grid, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
        ax.set_xticks(range(len(tests)), [t["candidate"] for t in tests], rotation=45, ha="right", fontsize=9)
        ax.set_yticks(range(len(names)), names, fontsize=9)
        for j, t in enumerate(tests):
            if t["stands_out"]:
                ax.add_patch(plt.Rectangle((j - 0.5, -0.5), 1, 1, fill=False, lw=2.5, ec="black"))
        fig.colorbar(im, ax=ax, label="mean lean")
        ax.set_title(f"{det}: each dataset's lean per candidate (box: stands out, Holm)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def panel_lines(out: dict[str, Any], chart: bool) -> list[str]:
    """The targeted tests as a table (smallest adjusted p first), under the targeted verdict."""
    panel = out.get("targeted")
    if not panel:
        return []
    lines = ["", "## Targeted tests against the panel", "", panel["verdict"], "",
             "| detector | candidate | excess lean [95% CI] | p | p (Holm) | rank | stands out |",
             "|---|---|---|---|---|---|---|"]
    for t in sorted(panel["tests"], key=lambda t: t["p_holm"]):
        lines.append(f"| {t['detector']} | {t['candidate']} | {t['excess']:+.3g} [{t['low']:+.3g}, {t['high']:+.3g}] "
                     f"| {t['p']:.2g} | {t['p_holm']:.2g} | {t['rank']} of {t['n_datasets']} | "
                     f"{'yes' if t['stands_out'] else 'no'} |")
    lines += [""] + [f"- {name}'s {note}" for name, note in panel.get("notes", {}).items()]
    return lines + (["", f"![panel]({PANEL_PNG})"] if chart else [])


def render_markdown(out: dict[str, Any], chart: bool = False, panel_chart: bool = False) -> str:
    lines = [f"# Audit of {out['dataset']}", "", out["verdict"], "",
             "| detector | statistic | p | top trait (untargeted) |", "|---|---|---|---|"]
    for d in out["detectors"]:
        lines.append(f"| {d['detector']} | {d['statistic']:+.4g} | {d['p_value']:.2g} | {d.get('top_trait', '—')} |")
    for name, why in out.get("skipped_detectors", {}).items():
        lines.append(f"| {name} | skipped: {why} | | |")
    verdicts = [f"- **{d['detector']}**: {d['verdict']}" for d in out["detectors"] if d.get("verdict")]
    notes = [f"- {d['detector']}'s {what}: {d[key]}" for d in out["detectors"]
             for what, key in (("first place", "top_trait_note"), ("name", "identified_note")) if d.get(key)]
    if verdicts:
        lines += ["", *verdicts]
    if notes:
        lines += ["", "How far the untargeted names go (a targeted test against a panel is the stronger reading):",
                  *notes]
    if chart:
        lines += ["", f"![ranking]({RANKING_PNG})"]
    lines += panel_lines(out, panel_chart)
    load = out["load"]
    lines += ["", f"Read {load['lines']} lines, used {load['kept']}; audited {out['n_audited']} against "
              f"{out['n_reference']} reference samples; skipped {load['skipped'] or 'none'}."]
    lines += [f"- {p}" for p in load["first_problems"]]
    return "\n".join(lines) + "\n"


def render_audit_report(out_dir: Path) -> Path:
    out = json.loads((out_dir / "audit.json").read_text())
    chart = render_ranking_chart(out, out_dir / RANKING_PNG)
    panel = render_panel_chart(out, out_dir / PANEL_PNG)
    path = out_dir / "report.md"
    write_text(path, render_markdown(out, chart, panel))
    return path
