"""The ``sublim`` command: one module per verb, each of which parses, calls one function and prints."""

from __future__ import annotations

import argparse
import sys

from sublim.cli import audit, defend, lineage, models, presets, run, runs, serve, toy
from sublim.core.errors import SublimError
from sublim.core.registry import load_plugins

VERBS = [run, presets, models, runs, serve, audit, defend, lineage, toy]


def build_parser() -> argparse.ArgumentParser:
    """The parser; choices (carriers, detectors, defences) are read from the registries now."""
    p = argparse.ArgumentParser(prog="sublim", description="Reproduce, measure and audit subliminal learning.")
    p.add_argument("--runs-dir", default="runs", help="where runs and artifacts live (default: runs)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = p.add_subparsers(dest="verb", required=True)
    for verb in VERBS:
        verb.add(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        load_plugins()
        args = build_parser().parse_args(argv)
        code = args.func(args)
    except SublimError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished stages are kept; run the same command again to resume", file=sys.stderr)
        return 130
    return int(code or 0)
