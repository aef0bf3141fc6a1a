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
from sublim.report.gain import draw_teacher_gain, ratio_axis  # noqa: E402

COLORS = {"control": "#4c72b0", "trait": "#dd8452"}


def _point(run: dict[str, Any]) -> str:
    return "\n".join(str(v) for v in run["point"].values()) or run["run_id"]


def render_chart(sweep: dict[str, Any], path: Path) -> None:
    """The verdict's endpoint per run: each teacher pair's trait-share ratio (trait student ÷ control student),
    their mean with the 95% t interval over teachers, and the ratio the rule needs."""
    runs = [r for r in sweep["runs"] if "replicated" in r]
    fig, ax = plt.subplots(figsize=(max(5.5, 1.6 * len(runs) + 2.5), 4.6))
    for x, run in enumerate(runs):
        draw_teacher_gain(ax, x, run["replicated"]["log_share_gain"], legend=x == 0)
    ratio_axis(ax, runs[0]["replicated"]["min_effect"] if runs else math.log(1.25),
               [f"{_point(r)}\n{r['replicated']['word']}" for r in runs])
    ax.set_ylabel("trait share, trait student ÷ control student", fontsize=9)
    failed = len(sweep.get("failed_runs", []))
    fig.suptitle(f"sweep {sweep['name']}: the verdict's endpoint, the teacher as the unit"
                 + (f"\n({failed} failed run{'s' if failed > 1 else ''} not shown: see the report)" if failed else ""),
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


def _p(p: float | None) -> str:
    return "—" if p is None else f"{p:.2g}"


def _verdict_table(sweep: dict[str, Any]) -> list[str]:
    """Each run's verdict by the rule: the word, the trait-share ratio over its control with the t interval
    over teachers, how many teachers, the sign-flip p and the candidate total (generic animal-naming)."""
    lines = ["## Verdicts", "", "| point | word | trait share ratio [95% t] | teachers | sign-flip p | "
             "candidate total ratio |", "|---|---|---|---|---|---|"]
    for r in sweep["runs"]:
        if "replicated" in r:
            rep, g = r["replicated"], r["replicated"]["log_share_gain"]
            iv = f" [{math.exp(g['low']):.2f}, {math.exp(g['high']):.2f}]" if g["low"] is not None else ""
            lines.append(f"| {', '.join(f'{k}={v}' for k, v in r['point'].items())} | {rep['word']} | "
                         f"×{g['ratio']:.2f}{iv} | {rep['n_teachers']} | {_p(g['p_sign_flip'])} | "
                         f"×{rep['log_candidate_total_gain']['ratio']:.2f} |")
    return lines + [""]


def render_markdown(sweep: dict[str, Any]) -> str:
    lines = [f"# Sweep {sweep['name']}", "",
             f"{len(sweep['runs'])} runs, executor `{sweep['executor']}`, {sweep['wall_time_s']:.0f} s. "
             "The unit is a teacher (one teacher seed of one run); intervals are 95% Student-t across teachers, p "
             "the exact sign-flip test of student vs control.", ""]
    lines += _verdict_table(sweep) + ["![chart](chart.png)", "", "![matrix](matrix.png)", ""]
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
