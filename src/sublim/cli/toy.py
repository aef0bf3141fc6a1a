"""``sublim toy``: the auxiliary-logit MLP experiment and its theory check."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from sublim.api import run_toy
from sublim.toy import load_toy_config


def add(sub: Any) -> None:
    p = sub.add_parser("toy", help="the auxiliary-logit MLP experiment and theory check")
    p.add_argument("preset", nargs="?", default=None, help="toy preset name or .toml path")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one toy config key (repeatable)")
    p.add_argument("--out", default=None, help="output directory (default: runs/toy/<hash>)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> None:
    cfg = load_toy_config(args.preset, args.set)
    out = Path(args.out) if args.out else Path(args.runs_dir) / "toy" / cfg.config_hash()[:10]
    result = run_toy(cfg, out, progress=not args.quiet)
    print(result["summary"])
    print(f"results: {out / 'results.json'}")
