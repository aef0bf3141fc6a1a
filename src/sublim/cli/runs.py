"""``sublim runs``: list runs under the runs directory, or show one run's report."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from sublim.core.errors import SublimError


def add(sub: Any) -> None:
    p = sub.add_parser("runs", help="list runs or show one run's report")
    p.add_argument("action", choices=["list", "show"])
    p.add_argument("run", nargs="?", help="run id (or a unique prefix) for `show`")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> None:
    root = Path(args.runs_dir)
    runs = sorted(p for p in root.glob("*/config.json")) if root.is_dir() else []
    if args.action == "list":
        if not runs:
            print(f"no runs under {root}")
        for cfg_path in runs:
            res_path = cfg_path.parent / "results.json"
            if res_path.is_file():
                res = json.loads(res_path.read_text())
                print(f"{cfg_path.parent.name:<36} done      {res['verdict'][:110]}")
            else:
                print(f"{cfg_path.parent.name:<36} unfinished (re-run to resume)")
        return
    if not args.run:
        raise SublimError("runs show needs a run id: see `sublim runs list`")
    run_dir = root / args.run
    if not run_dir.is_dir():
        matches = [p.parent for p in runs if p.parent.name.startswith(args.run)]
        if len(matches) != 1:
            raise SublimError(f"no single run matches {args.run!r} under {root}: see `sublim runs list`")
        run_dir = matches[0]
    report = run_dir / "report.md"
    if not report.is_file():
        raise SublimError(f"run {run_dir.name} has no report yet: re-run its config to finish it")
    print(report.read_text())
