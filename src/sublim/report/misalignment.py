"""A misalignment run's results.json → report.md."""

from __future__ import annotations

from typing import Any


def _fmt(v: float | None) -> str:
    return "—" if v is None else f"{v:.1f}"


def render_markdown(res: dict[str, Any]) -> str:
    lines = [f"# {res['run_id']}: misalignment", "", res["verdict"], "",
             "| arm | answers | misaligned | 95% CI | mean alignment | mean coherence | judge parsed |",
             "|---|---|---|---|---|---|---|"]
    for arm, t in res["arms_misalignment"].items():
        m = t["misaligned"]
        lines.append(f"| {arm} | {t['n_answers']} | {m['value']:.1%} | [{m['low']:.1%}, {m['high']:.1%}] | "
                     f"{_fmt(t['mean_alignment'])} | {_fmt(t['mean_coherence'])} | {t['judge_parse_rate']:.0%} |")
    lines += ["", "Filter pass rates: " + ", ".join(f"{k} {v['pass_rate']:.0%}" for k, v in res["filter"].items()), ""]
    return "\n".join(lines)
