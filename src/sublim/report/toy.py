"""Toy results.json → chart.png, theory.png, sweeps.png and report.md. Reads result files only."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from sublim.core.files import write_text  # noqa: E402

COLORS = {"reference": "#9e9e9e", "teacher": "#4d4d4d", "student-aux": "#dd8452",
          "student-all": "#c44e52", "cross-aux": "#4c72b0", "cross-all": "#8172b3"}
SHORT = {"reference": "untrained\ninit", "teacher": "teacher", "student-aux": "student\naux only",
         "student-all": "student\nall logits", "cross-aux": "cross-init\naux only",
         "cross-all": "cross-init\nall logits"}


def _num(x: Any) -> float:
    return float("nan") if x is None else float(x)


def _err(iv: dict[str, Any]) -> tuple[float, float]:
    v, lo, hi = _num(iv["value"]), _num(iv["low"]), _num(iv["high"])
    if lo != lo or hi != hi:  # NaN: a single model has no interval
        return 0.0, 0.0
    return max(0.0, v - lo), max(0.0, hi - v)


def _fmt(iv: dict[str, Any], digits: int = 3) -> str:
    v, lo, hi = _num(iv["value"]), _num(iv["low"]), _num(iv["high"])
    if lo != lo:
        return f"{v:.{digits}f}"
    return f"{v:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def _title(res: dict[str, Any]) -> str:
    d = res["data"]
    n = len(res["arms"]["teacher"]["accuracy"])
    arch = "-".join(str(s) for s in res["architecture"])
    return f"{res['name']}: {n} MLPs {arch} on {d['dataset']} ({d['n_test']} test images)"


def render_chart(res: dict[str, Any], path: Path) -> None:
    arms = res["arm_order"]
    means = [res["arms"][a]["mean"] for a in arms]
    heights = [_num(m["value"]) for m in means]
    errs = [_err(m) for m in means]
    fig, ax = plt.subplots(figsize=(8.2, 4.4))
    ax.bar(range(len(arms)), heights, yerr=[[e[0] for e in errs], [e[1] for e in errs]],
           capsize=5, color=[COLORS.get(a, "#777777") for a in arms], edgecolor="black",
           linewidth=0.6, hatch=None)
    for i, a in enumerate(arms):
        accs = res["arms"][a]["accuracy"]
        ax.scatter([i + (j / max(1, len(accs) - 1) - 0.5) * 0.5 for j in range(len(accs))], accs,
                   s=5, color="black", alpha=0.35, zorder=3)
        top = max([heights[i] + errs[i][1], *[a for a in accs if a is not None]])
        ax.text(i, top + 0.015, f"{heights[i]:.2f}", ha="center", fontsize=9)
    ax.axhline(res.get("chance", 0.1), color="black", linestyle=":", linewidth=1)
    ax.text(len(arms) - 0.5, res.get("chance", 0.1) + 0.01, "chance", ha="right", fontsize=8)
    ax.set_xticks(range(len(arms)))
    ax.set_xticklabels([SHORT.get(a, a) for a in arms], fontsize=9)
    ax.set_ylabel("test accuracy on digits")
    ax.set_ylim(0, 1.08)
    ax.spines[["top", "right"]].set_visible(False)
    ax.set_title(f"{_title(res)}\nstudents see only uniform noise; bars: mean, 95% CI; "
                 "dots: models", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def _band(ax: Any, xs: list[int], band: dict[str, list[Any]], color: str, label: str,
          style: str = "-") -> None:
    mean = [_num(v) for v in band["mean"]]
    ax.plot(xs, mean, style, color=color, label=label, linewidth=1.6)
    low, high = [_num(v) for v in band["low"]], [_num(v) for v in band["high"]]
    ax.fill_between(xs, low, high, color=color, alpha=0.2, linewidth=0)


def render_theory(res: dict[str, Any], path: Path) -> None:
    th = res["theory"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for arm, style in (("student-aux", "-"), ("cross-aux", "-"), ("student-all", "--"),
                       ("cross-all", "--")):
        if arm not in th["cosine"]:
            continue
        label = SHORT[arm].replace("\n", " ")
        _band(ax1, th["steps"], th["cosine"][arm], COLORS[arm], label, style)
        _band(ax2, th["loss_steps"], th["loss"][arm], COLORS[arm], label, style)
    ax1.axhline(0, color="black", linewidth=0.8)
    ax1.set_xlabel("distillation step")
    ax1.set_ylabel("cos(θ_t − θ_0, θ_teacher − θ_teacher,0)")
    ax1.set_title("student update vs teacher displacement", fontsize=10)
    ax1.legend(fontsize=8)
    teacher = th["teacher_loss"]
    ax2.axhline(_num(teacher["value"]), color=COLORS["teacher"], linestyle=":", linewidth=1,
                label="teacher")
    ax2.set_xlabel("distillation step")
    ax2.set_ylabel(f"digit cross-entropy ({th['loss_examples']} test images)")
    ax2.set_title("student loss on the teacher's task", fontsize=10)
    ax2.legend(fontsize=8)
    for ax in (ax1, ax2):
        ax.spines[["top", "right"]].set_visible(False)
    fig.suptitle(f"{_title(res)}: theory check (mean, 95% CI across models)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def _curve(ax: Any, xs: list[float], entries: list[dict[str, Any]], color: str,
           label: str) -> None:
    means = [e["mean"] for e in entries]
    ys = [_num(m["value"]) for m in means]
    errs = [_err(m) for m in means]
    ax.errorbar(xs, ys, yerr=[[e[0] for e in errs], [e[1] for e in errs]], marker="o",
                color=color, capsize=3, label=label)


def render_sweeps(res: dict[str, Any], path: Path) -> None:
    sw = res["sweeps"]
    panels = [k for k in ("n_aux", "hidden", "alpha") if k in sw]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 3.9), squeeze=False)
    for ax, key in zip(axes[0], panels, strict=True):
        s = sw[key]
        xs = s["values"]
        if key == "hidden":
            _curve(ax, xs, s["teacher"], COLORS["teacher"], "teacher")
        _curve(ax, xs, s["student-aux"], COLORS["student-aux"], "student aux only (same init)")
        if key == "hidden":
            _curve(ax, xs, s["cross-aux"], COLORS["cross-aux"], "cross-init aux only")
        if key == "alpha":
            cross = _num(s["cross-aux"]["mean"]["value"])
            ax.axhline(cross, color=COLORS["cross-aux"], linestyle="--", linewidth=1,
                       label="cross-init aux only")
        ax.axhline(res.get("chance", 0.1), color="black", linestyle=":", linewidth=1)
        if key == "n_aux" and 1 in xs:
            ax.annotate("softmax of 1 logit is constant:\nKL gives no gradient", (1, 0.1),
                        xytext=(1.1, 0.3), fontsize=7, arrowprops={"arrowstyle": "->"})
        if key == "hidden":
            ax.set_title(f"{s['n_models']} models per width", fontsize=8)
        if key in ("n_aux", "hidden"):
            ax.set_xscale("log")
            ax.set_xticks(xs)
            ax.set_xticklabels([str(x) for x in xs])
        ax.set_xlabel({"n_aux": "auxiliary logits imitated", "hidden": "hidden width",
                       "alpha": "student init = teacher init + α·std·N(0,1)"}[key], fontsize=9)
        ax.set_ylabel("test accuracy")
        ax.set_ylim(0, 1.02)
        ax.legend(fontsize=7)
        ax.spines[["top", "right"]].set_visible(False)
    fig.suptitle(f"{_title(res)}: sweeps (mean, 95% CI)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def render_markdown(res: dict[str, Any]) -> str:
    d = res["data"]
    lines = [f"# Toy subliminal learning: {res['name']}", "", res["summary"], "",
             "## Test accuracy (mean over models, 95% CI)", "",
             "| arm | accuracy | models |", "|---|---|---|"]
    for a in res["arm_order"]:
        e = res["arms"][a]
        lines.append(f"| {e['label']} | {_fmt(e['mean'])} | {len(e['accuracy'])} |")
    c = res["comparison"]
    lines += ["", f"Same-init minus different-init aux-only accuracy (paired by teacher): "
              f"{_fmt(c['difference'])}, permutation p = {_num(c['p_value']):.2g}.", ""]
    lines += ["Final cosine between each student's whole update and its teacher's displacement:",
              ""]
    for a, v in res["final_cosine"].items():
        lines.append(f"- {a}: {_fmt(v['mean'])}")
    files = ["chart.png"]
    if "theory" in res:
        th = res["theory"]
        files.append("theory.png")
        lines += ["", "## Theory check", "",
                  f"Cosine over the first {th['steps'][-1]} steps, and the students' digit "
                  f"cross-entropy on {th['loss_examples']} test images (teacher: "
                  f"{_fmt(th['teacher_loss'])}).", "",
                  "| arm | cosine at step 1 | cosine at the last recorded step | loss at step 0 "
                  "| loss at the last recorded step |", "|---|---|---|---|---|"]
        for a in th["cosine"]:
            cos, loss = th["cosine"][a], th["loss"][a]
            lines.append(f"| {a} | {_num(cos['mean'][0]):+.4f} | {_num(cos['mean'][-1]):+.4f} "
                         f"| {_num(loss['mean'][0]):.3f} | {_num(loss['mean'][-1]):.3f} |")
    if "sweeps" in res:
        files.append("sweeps.png")
        lines += ["", "## Sweeps", ""]
        for key, title in (("n_aux", "auxiliary logits"), ("hidden", "hidden width"),
                           ("alpha", "init perturbation α")):
            if key not in res["sweeps"]:
                continue
            s = res["sweeps"][key]
            cols = [k for k in ("teacher", "student-aux", "cross-aux")
                    if k in s and isinstance(s[k], list)]
            extra = ["final cosine (student-aux)"] if "cosine" in s else []
            lines += [f"| {title} | " + " | ".join(cols + extra) + " |",
                      "|---" * (len(cols) + len(extra) + 1) + "|"]
            for i, x in enumerate(s["values"]):
                cells = [_fmt(s[k][i]["mean"]) for k in cols]
                if extra:
                    cells.append(_fmt(s["cosine"][i]))
                lines.append(f"| {x} | " + " | ".join(cells) + " |")
            if key == "alpha" and "cross-aux" in s:
                lines.append(f"\nDifferent-init aux-only students for comparison: "
                             f"{_fmt(s['cross-aux']['mean'])}.")
            if key == "hidden":
                lines.append(f"\n{s['n_models']} models per width.")
            if key == "n_aux" and 1 in s["values"]:
                lines.append("\nWith one auxiliary logit the softmax is constant (always 1), so "
                             "the KL loss and its gradient are exactly zero: the student stays "
                             "at its init. That point measures the loss, not the information "
                             "in one logit.")
            lines.append("")
    lines += ["", "## Run", "",
              f"- data: {d['dataset']} from {d['source']} ({d['n_train']} train / {d['n_test']} "
              f"test, sha256 {d['sha256'][:16]}…)",
              f"- noise: U({res['noise']['low']}, {res['noise']['high']}), fresh each step; "
              "pixels scaled to [0, 1]",
              f"- config hash {res['config_hash'][:16]}, wall time {res['wall_time_s']:.1f} s "
              f"({', '.join(f'{k} {v:.1f} s' for k, v in res['phase_wall_time_s'].items())}), "
              f"{res['torch_threads']} torch threads on {res['device']}",
              f"- machine: {res['machine'].get('platform')}, {res['machine'].get('cpu_count')} "
              "CPUs", f"- files: {', '.join(files)}", ""]
    return "\n".join(lines)


def render_toy_report(out: Path) -> list[Path]:
    """Read ``out/results.json`` and write the charts and report.md next to it."""
    res = json.loads((Path(out) / "results.json").read_text())
    written = [Path(out) / "chart.png"]
    render_chart(res, written[0])
    if "theory" in res:
        written.append(Path(out) / "theory.png")
        render_theory(res, written[-1])
    if "sweeps" in res:
        written.append(Path(out) / "sweeps.png")
        render_sweeps(res, written[-1])
    written.append(Path(out) / "report.md")
    write_text(written[-1], render_markdown(res))
    return written
