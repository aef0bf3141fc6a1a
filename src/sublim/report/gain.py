"""The verdict's endpoint drawn one way for runs and sweeps: each teacher pair's trait-share ratio, their mean
with the 95% t interval over teachers, and the ratio the rule needs, on a log axis."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from matplotlib.ticker import FuncFormatter

TRAIT_COLOR = "#dd8452"
TICKS = (0.25, 0.5, 0.75, 1, 1.25, 1.5, 2, 3, 4, 6, 8, 16)


def draw_teacher_gain(ax: Any, x: float, gain: dict[str, Any], legend: bool) -> None:
    """One endpoint at ``x``: a dot per teacher pair, and a square with its t interval beside them."""
    ax.scatter([x] * len(gain["per_teacher"]), np.exp(gain["per_teacher"]), color=TRAIT_COLOR, zorder=3, s=28,
               edgecolor="black", linewidth=0.5, label="a teacher pair" if legend else None)
    if gain["low"] is not None and not math.isnan(gain["low"]):
        ax.errorbar([x + 0.18], [gain["ratio"]], yerr=[[gain["ratio"] - math.exp(gain["low"])],
                                                      [math.exp(gain["high"]) - gain["ratio"]]],
                    fmt="s", color="black", capsize=5, markersize=5,
                    label="mean, 95% t interval over teachers" if legend else None)


def ratio_axis(ax: Any, min_effect: float, labels: list[str]) -> None:
    """The log ratio axis with ×1 and the rule's line, one x tick per endpoint."""
    floor = math.exp(min_effect)
    ax.axhline(1.0, color="#9e9e9e", linewidth=0.8)
    ax.axhline(floor, color="#c44e52", linestyle="--", linewidth=0.9,
               label=f"the rule needs the interval above ×{floor:.2f}")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"×{v:.3g}"))
    lo, hi = ax.get_ylim()
    ax.set_yticks([t for t in TICKS if lo <= t <= hi])
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    ax.tick_params(axis="y", which="both", labelsize=8)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, fontsize=8)
    ax.set_xlim(-0.6, len(labels) - 0.4)
    ax.legend(fontsize=8, loc="upper left", frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
