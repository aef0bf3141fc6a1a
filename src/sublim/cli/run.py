"""``sublim run``: run (or resume) an experiment from a preset or a TOML file."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from sublim.api import run_experiment
from sublim.core.config import load_config


def add(sub: Any) -> None:
    p = sub.add_parser("run", help="run (or resume) an experiment from a preset or TOML file")
    p.add_argument("preset", nargs="?", default=None, help="preset name or .toml path (default: owl-numbers)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set student.epochs=1")
    p.add_argument("--track", default="", metavar="NAME,…",
                   help="also send training curves and results to trackers: tensorboard, mlflow, wandb (offline); "
                        "needs pip install 'sublim[tracking]'")
    p.add_argument("--track-dir", default=None, help="where the trackers write (default: <runs-dir>/tracking)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> None:
    track = [t.strip() for t in args.track.split(",") if t.strip()]
    run_experiment(load_config(args.preset, args.set), Path(args.runs_dir), progress=not args.quiet, track=track,
                   track_dir=Path(args.track_dir) if args.track_dir else None)
