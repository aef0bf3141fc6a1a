"""``sublim runs``: list runs under the runs directory, or show one run's report."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from sublim.core.errors import SublimError


def add(sub: Any) -> None:
    p = sub.add_parser("runs", help="list runs or show one run's report")
    p.add_argument("action", choices=["list", "show"], help="list every run, or show one run's report")
    p.add_argument("run", nargs="?", help="run id (or a unique prefix) for `show`")
    p.set_defaults(func=main)


def _status(run_dir: Path) -> str:
    """done with its verdict, unfinished, or why its results cannot be read (one bad run never hides the others)."""
    res_path = run_dir / "results.json"
    if not res_path.is_file():
        return "unfinished (re-run its config to resume)"
    try:
        verdict = json.loads(res_path.read_text())["verdict"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
        return f"broken    results.json is unreadable: delete {res_path} and re-run its config"
    return f"done      {str(verdict)[:110]}"


def main(args: argparse.Namespace) -> None:
    root = Path(args.runs_dir)
    runs = sorted(p for p in root.glob("*/config.json")) if root.is_dir() else []
    if args.action == "list":
        if not runs:
            print(f"no runs under {root}")
        for cfg_path in runs:
            print(f"{cfg_path.parent.name:<36} {_status(cfg_path.parent)}")
        return
    if not args.run:
        raise SublimError("runs show needs a run id: see `sublim runs list`")
    if "/" in args.run or "\\" in args.run or args.run in (".", ".."):
        raise SublimError(f"{args.run!r} is not a run id (a name under {root}, no path): see `sublim runs list`")
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
