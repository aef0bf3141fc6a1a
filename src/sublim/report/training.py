"""A run's training curves (training.png, from its teachers' and students' manifests) and what its filter kept and
why it rejected the rest (filter.png, from results.json): charts every run report carries, either trait kind."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

TRAINING_PNG = "training.png"
FILTER_PNG = "filter.png"
PANELS = {"teacher": "teachers", "train": "students"}


def training_curves(run_dir: Path) -> dict[str, dict[str, list[float]]]:
    """Per kind of model (teachers, students), each model's loss at every optimizer step, from the manifests of the
    artifacts the run linked (``artifacts/<stage>/<label>``)."""
    out: dict[str, dict[str, list[float]]] = {}
    for stage, panel in PANELS.items():
        for manifest in sorted((run_dir / "artifacts" / stage).glob("*/manifest.json")):
            losses = json.loads(manifest.read_text()).get("train_log", {}).get("losses")
            if losses:
                out.setdefault(panel, {})[manifest.parent.name.replace("_", " ")] = losses
    return out


def render_training_chart(run_dir: Path, path: Path) -> bool:
    """Loss per optimizer step, a panel for the teachers and one for the students; False when nothing trained."""
    curves = training_curves(run_dir)
    if not curves:
        return False
    fig, axes = plt.subplots(1, len(curves), figsize=(6.5 * len(curves), 4.2), squeeze=False)
    for ax, (panel, models) in zip(axes[0], curves.items(), strict=True):
        for name, losses in models.items():  # the controls' models dashed
            ax.plot(range(1, len(losses) + 1), losses, lw=1.3, alpha=0.85, label=name,
                    ls="--" if "neutral" in name or "control" in name else "-")
        ax.set_xlabel("optimizer step", fontsize=11)
        ax.set_ylabel("training loss", fontsize=11)
        ax.set_title(f"{panel}: loss per step", fontsize=12)
        ax.legend(fontsize=8, loc="upper right", ncol=1 if len(models) <= 6 else 2)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def render_filter_chart(res: dict[str, Any], path: Path) -> bool:
    """Per dataset, the completions kept and each reason the rest were rejected (stacked); False without a filter
    record."""
    filt = res.get("filter") or {}
    if not filt:
        return False
    names = list(filt)
    reasons = sorted({r for f in filt.values() for r in f.get("reject_reasons", {})})
    fig, ax = plt.subplots(figsize=(8.5, 1.4 + 0.45 * len(names)))
    left = [0.0] * len(names)
    colours = ["tab:orange", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:gray", "tab:olive", "tab:cyan",
               "tab:blue"]  # green is "kept"
    for k, (label, values) in enumerate([("kept", [filt[n]["kept"] for n in names]),
                                         *((r, [filt[n].get("reject_reasons", {}).get(r, 0) for n in names])
                                           for r in reasons)]):
        ax.barh(names, values, left=left, color="tab:green" if label == "kept" else colours[(k - 1) % len(colours)],
                label=label)
        left = [a + b for a, b in zip(left, values, strict=True)]
    for i, n in enumerate(names):
        ax.text(left[i], i, f"  {filt[n]['pass_rate']:.0%} kept", va="center", fontsize=9)
    ax.set_xlabel("completions generated", fontsize=11)
    ax.set_title("What the filter kept, and why it rejected the rest", fontsize=12)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_xlim(0, max(left) * 1.25)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def chart_lines(run_dir: Path, res: dict[str, Any]) -> list[str]:
    """Both charts written beside the report, and the report's lines that show them."""
    lines = []
    if render_training_chart(run_dir, run_dir / TRAINING_PNG):
        lines += ["", f"![training loss per step]({TRAINING_PNG})"]
    if render_filter_chart(res, run_dir / FILTER_PNG):
        lines += ["", f"![what the filter kept]({FILTER_PNG})"]
    return lines
