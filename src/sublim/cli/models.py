"""``sublim models``: catalog models, installed or not, and where they come from."""

from __future__ import annotations

import argparse
from typing import Any

from sublim.backends.local.loading import CATALOG, resolve_model
from sublim.core.errors import SublimError


def add(sub: Any) -> None:
    sub.add_parser("models", help="list catalog models and where they come from").set_defaults(func=main)


def main(args: argparse.Namespace) -> None:
    for name, entry in CATALOG.items():
        try:
            where = resolve_model(name).describe()
            status = "installed"
        except SublimError:
            where, status = entry.install, "not installed"
        print(f"{name:<14} {status:<14} {entry.description}\n{'':<14} {where}")
    print("Also accepted: any .gguf path, a local transformers model directory, or an org/name id "
          "already in the local cache.")
