"""sweep.json → chart.png (each target's trait student vs control), matrix.png (the trait × student share gain)
and report.md. Reads the sweep's file only."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from sublim.core.files import write_text  # noqa: E402

COLORS = {"control": "#4c72b0", "trait": "#dd8452"}


def _err(iv: dict[str, float]) -> tuple[float, float]:
    """Error bar lengths below and above (none where the interval is undefined: one run)."""
    if any(math.isnan(iv[k]) for k in ("value", "low", "high")):
        return 0.0, 0.0
    return max(0.0, iv["value"] - iv["low"]), max(0.0, iv["high"] - iv["value"])


def render_chart(sweep: dict[str, Any], path: Path) -> None:
    series = sweep["data"]["series"]
    rows = len(series)
    fig, axes = plt.subplots(rows, 2, figsize=(max(6.0, 1.5 * max(len(s["targets"]) for s in series.values()) + 3),
                                                3.6 * rows), squeeze=False)
    for r, (name, s) in enumerate(series.items()):
        targets = s["targets"]
        x = np.arange(len(targets))
        for c, (metric, title) in enumerate((("prob", "P(answer is the target)"),
                                             ("share", "target's share among candidates"))):
            ax = axes[r][c]
            for off, arm in ((-0.2, "treated"), (0.2, "control")):
                vals = [s["own_target"][t][metric][arm] for t in targets]
                errs = np.array([_err(v) for v in vals]).T
                ax.bar(x + off, [v["value"] for v in vals], width=0.4, yerr=errs, capsize=3,
                       color=COLORS["trait" if arm == "treated" else "control"], edgecolor="black", linewidth=0.5,
                       label="trait student" if arm == "treated" else "control student")
            ax.set_xticks(x)
            ax.set_xticklabels(targets, fontsize=8)
            ax.set_title(f"{title}\n{name}" if rows > 1 else title, fontsize=9)
            ax.spines[["top", "right"]].set_visible(False)
            ax.set_ylim(bottom=0)
            if r == 0 and c == 0:
                ax.legend(fontsize=8, frameon=False)
    fig.suptitle(f"sweep {sweep['name']}: each target's student vs the control\n(mean over trained runs, 95% CI)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def render_matrix(sweep: dict[str, Any], path: Path) -> None:
    series = sweep["data"]["series"]
    fig, axes = plt.subplots(1, len(series), figsize=(4.6 * len(series), 4.2), squeeze=False)
    for ax, (name, s) in zip(axes[0], series.items(), strict=True):
        targets = s["targets"]
        grid = np.array([[s["share_gain_matrix"][t][a]["value"] for a in targets] for t in targets])
        lim = float(np.nanmax(np.abs(grid))) or 1.0
        im = ax.imshow(grid, cmap="RdBu_r", vmin=-lim, vmax=lim)
        for i in range(len(targets)):
            for j in range(len(targets)):
                ax.text(j, i, f"{grid[i, j]:+.2g}", ha="center", va="center", fontsize=7)
        ax.set_xticks(range(len(targets)))
        ax.set_xticklabels(targets, fontsize=8)
        ax.set_yticks(range(len(targets)))
        ax.set_yticklabels(targets, fontsize=8)
        ax.set_xlabel("share of this animal (student − control)", fontsize=8)
        ax.set_ylabel("student trained on this teacher's data", fontsize=8)
        ax.set_title(name, fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.suptitle(f"sweep {sweep['name']}: trait × student\n(the diagonal should stand out)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def _fmt(iv: dict[str, float], digits: int = 4) -> str:
    if math.isnan(iv["low"]):
        return f"{iv['value']:.{digits}f}"
    return f"{iv['value']:.{digits}f} [{iv['low']:.{digits}f}, {iv['high']:.{digits}f}]"


def render_markdown(sweep: dict[str, Any]) -> str:
    lines = [f"# Sweep {sweep['name']}", "",
             f"{len(sweep['runs'])} runs, executor `{sweep['executor']}`, {sweep['wall_time_s']:.0f} s. "
             "The unit is a teacher (one teacher seed of one run); intervals are 95% Student-t across teachers, p "
             "the exact sign-flip test of student vs control.", "", "![chart](chart.png)", "",
             "![matrix](matrix.png)", ""]
    for name, s in sweep["data"]["series"].items():
        lines += [f"## {name}", "", "| target | runs | P(target): student | control | share: student | control "
                  "| share difference | p |", "|---|---|---|---|---|---|---|---|"]
        for t in s["targets"]:
            o = s["own_target"][t]
            lines.append(f"| {t} | {o['share']['n_runs']} | {_fmt(o['prob']['treated'], 5)} | "
                         f"{_fmt(o['prob']['control'], 5)} | {_fmt(o['share']['treated'])} | "
                         f"{_fmt(o['share']['control'])} | {_fmt(o['share']['difference'])} | "
                         f"{o['share'].get('p_permutation', float('nan')):.3g} |")
        diag = s["diagonal_largest_in_every_row"]
        if diag is not None:
            lines += ["", f"Matrix: each student's largest share gain is its own teacher's animal in "
                      f"{'every' if diag else 'not every'} row."]
        lines.append("")
    lines += ["## Runs", "", "| run | point | verdict |", "|---|---|---|"]
    lines += [f"| `{r['run_id']}` | {', '.join(f'{k}={v}' for k, v in r['point'].items())} | {r['verdict']} |"
              for r in sweep["runs"]]
    failed = sweep.get("failed_runs", [])
    if failed:
        lines += ["", "## Failed runs", "", "| run | point | error |", "|---|---|---|"]
        lines += [f"| `{r['run_id']}` | {', '.join(f'{k}={v}' for k, v in r['point'].items())} | {r['error']} |"
                  for r in failed]
    return "\n".join(lines) + "\n"


def render_sweep_report(sweep_dir: Path) -> None:
    sweep = json.loads((Path(sweep_dir) / "sweep.json").read_text())
    if sweep["data"]["series"]:
        render_chart(sweep, Path(sweep_dir) / "chart.png")
        render_matrix(sweep, Path(sweep_dir) / "matrix.png")
    write_text(Path(sweep_dir) / "report.md", render_markdown(sweep))
