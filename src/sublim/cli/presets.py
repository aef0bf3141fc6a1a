"""``sublim presets``: the shipped presets."""

from __future__ import annotations

import argparse
from typing import Any

from sublim.core.config import load_config, preset_names


def add(sub: Any) -> None:
    sub.add_parser("presets", help="list shipped presets").set_defaults(func=main)


def main(args: argparse.Namespace) -> None:
    for name in preset_names():
        if name.startswith("toy-"):
            print(f"{name:<22} (sublim toy)")
            continue
        print(f"{name:<22} {load_config(name).description}")
