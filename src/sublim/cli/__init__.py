"""The ``sublim`` command: one module per verb, each of which parses, calls one function and prints."""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from pathlib import Path

from sublim.cli import audit, defend, lineage, models, presets, run, runs, serve, sweep, toy
from sublim.core.errors import SublimError
from sublim.core.registry import load_plugins

VERBS = [run, sweep, presets, models, runs, serve, audit, defend, lineage, toy]


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
    except Exception as exc:  # a bug: one line for the user, the traceback in a file for the report
        log = crash_log()
        print(f"error: internal error ({type(exc).__name__}: {str(exc)[:200]}): this is a bug in sublim, not your "
              f"input; finished stages are kept; the traceback is in {log}, please report it", file=sys.stderr)
        return 1
    return int(code or 0)


def crash_log() -> Path:
    """Write the current exception's traceback to a file under the cache directory; return its path."""
    root = Path(os.environ.get("SUBLIM_CACHE", Path.home() / ".cache" / "sublim")) / "crashes"
    try:
        root.mkdir(parents=True, exist_ok=True)
        path = root / f"crash-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
        path.write_text(" ".join(sys.argv) + "\n\n" + traceback.format_exc())
    except OSError:
        path = Path("(could not be written)")
    return path
