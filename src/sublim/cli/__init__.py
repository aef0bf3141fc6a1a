"""The ``sublim`` command: one module per verb, each of which parses, calls one function and prints."""

from __future__ import annotations

import argparse
import errno
import os
import sys
import time
import traceback
from pathlib import Path

from sublim import __version__
from sublim.cli import audit, defend, export, lineage, models, presets, run, runs, serve, sweep, toy
from sublim.core.errors import SublimError
from sublim.core.registry import load_plugins

VERBS = [run, sweep, presets, models, runs, serve, audit, defend, lineage, export, toy]


class Formatter(argparse.HelpFormatter):
    """Help that ends each flag's text with its default, where it has one worth showing."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        shown = action.default not in (None, False, [], argparse.SUPPRESS) and "default" not in text
        return f"{text} (default: %(default)s)".strip() if action.option_strings and shown else text


def global_flags(p: argparse.ArgumentParser, after_verb: bool = False) -> None:
    """The flags every command takes, before or after its verb (after it, a flag left out keeps the value given
    before it)."""
    keep = argparse.SUPPRESS
    p.add_argument("--runs-dir", default=keep if after_verb else "runs", help="where runs and artifacts live")
    p.add_argument("-q", "--quiet", action="store_true", default=keep if after_verb else False,
                   help="no progress bars")


def _commands(p: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """Every (sub)command parser under ``p``, each once."""
    found: dict[int, argparse.ArgumentParser] = {}
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                found.setdefault(id(child), child)
                found.update({id(c): c for c in _commands(child)})
    return list(found.values())


def build_parser() -> argparse.ArgumentParser:
    """The parser; choices (carriers, detectors, defences) are read from the registries now."""
    p = argparse.ArgumentParser(prog="sublim", description="Reproduce, measure and audit subliminal learning.",
                                formatter_class=Formatter)
    p.add_argument("--version", action="version", version=f"sublim {__version__}")
    global_flags(p)
    sub = p.add_subparsers(dest="verb", required=True)
    for verb in VERBS:
        verb.add(sub)
    for command in _commands(p):
        global_flags(command, after_verb=True)
        command.formatter_class = Formatter
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
    except BrokenPipeError:  # the reader went away (`sublim presets | head -1`): stop quietly, as other commands do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes
        return 141
    except Exception as exc:  # a bug: one line for the user, the traceback in a file for the report
        if disk_full(exc):
            said = " ".join(str(exc).split())[:160]
            print(f"error: the disk is full ({said}): free space, or give --runs-dir on another disk, and run "
                  "the same command again; finished stages are kept, and a training goes on from its last saved "
                  "state", file=sys.stderr)
            return 2
        log = crash_log()
        print(f"error: internal error ({type(exc).__name__}: {str(exc)[:200]}): this is a bug in sublim, not your "
              f"input; finished stages are kept; the traceback is in {log}, please report it", file=sys.stderr)
        return 1
    return int(code or 0)


def disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` says a write found no space left (an OSError, or a library's own error, such as
    safetensors', that carries the system's message)."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(exc)
    return "No space left on device" in text or "StorageFull" in text or "Disk quota exceeded" in text


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
