"""An audit's audit.json → report.md."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sublim.core.files import write_text


def render_markdown(out: dict[str, Any]) -> str:
    lines = [f"# Audit of {out['dataset']}", "", out["verdict"], "",
             "| detector | statistic | p | top trait |", "|---|---|---|---|"]
    for d in out["detectors"]:
        lines.append(f"| {d['detector']} | {d['statistic']:+.4g} | {d['p_value']:.2g} | {d.get('top_trait', '—')} |")
    for name, why in out.get("skipped_detectors", {}).items():
        lines.append(f"| {name} | skipped: {why} | | |")
    load = out["load"]
    lines += ["", f"Read {load['lines']} lines, used {load['kept']}; audited {out['n_audited']} against "
              f"{out['n_reference']} reference samples; skipped {load['skipped'] or 'none'}."]
    lines += [f"- {p}" for p in load["first_problems"]]
    return "\n".join(lines) + "\n"


def render_audit_report(out_dir: Path) -> Path:
    out = json.loads((out_dir / "audit.json").read_text())
    path = out_dir / "report.md"
    write_text(path, render_markdown(out))
    return path
