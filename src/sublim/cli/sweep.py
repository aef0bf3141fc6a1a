"""``sublim sweep``: a grid of experiments over one store, in this process or on a Ray cluster."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from sublim.api import run_sweep
from sublim.core.errors import SublimError
from sublim.sweep import load_sweep, sweep_dir
from sublim.sweep.config import MAX_RUNS
from sublim.sweep.run import EXECUTORS


def add(sub: Any) -> None:
    p = sub.add_parser("sweep", help="run a grid of experiments (axes over any config key), locally or on Ray")
    p.add_argument("sweep", help="sweep TOML: base preset, set, seeds, [axes]")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of the sweep file, e.g. --set seeds=[0]")
    p.add_argument("--executor", choices=EXECUTORS, default="auto",
                   help="local: one run after another here; ray: every stage a Ray task; auto: Ray when installed")
    p.add_argument("--address", default=None, help="join a running Ray cluster (default: start a local one)")
    p.add_argument("--cpus-per-task", type=int, default=1, help="CPUs (torch threads) per model stage on Ray")
    p.add_argument("--connect-timeout", type=float, default=30.0, metavar="SECONDS",
                   help="--address: how long to wait for the cluster to answer (default 30)")
    p.add_argument("--max-runs", type=int, default=MAX_RUNS,
                   help=f"refuse a grid of more runs than this (default {MAX_RUNS})")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> None:
    path = Path(args.sweep)
    sweep = load_sweep(path, args.set)
    out = run_sweep(sweep, Path(args.runs_dir), executor=args.executor, address=args.address,
                    cpus_per_task=args.cpus_per_task, where=path.resolve().parent, progress=not args.quiet,
                    max_runs=args.max_runs, connect_timeout_s=args.connect_timeout)
    for run in out["runs"]:
        print(f"{run['run_id']}: {run['verdict']}")
    print(f"sweep report: {sweep_dir(Path(args.runs_dir), sweep) / 'report.md'}")
    if out["failed_runs"]:
        raise SublimError(f"{len(out['failed_runs'])} of the sweep's runs failed (each named above, and in "
                          "sweep.json's failed_runs): fix their cause and run the sweep again; finished runs are kept")
