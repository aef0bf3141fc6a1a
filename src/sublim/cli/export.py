"""``sublim export``: a dataset in the field's formats, or a trained model as a plain transformers folder."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from sublim.audit.formats import FORMATS, export_data
from sublim.backends.local.export import export_model
from sublim.core.errors import SublimError

SUFFIX = {"messages": ".messages.jsonl", "trl": ".trl.jsonl", "parquet": ""}


def add(sub: Any) -> None:
    p = sub.add_parser("export", help="a dataset as messages/TRL/parquet, or a model as a transformers folder")
    what = p.add_subparsers(dest="what", required=True)
    d = what.add_parser("data", help="a dataset artifact (runs/store/filter-…) in another format")
    d.add_argument("artifact", help="the dataset: its artifact folder or dataset.jsonl")
    d.add_argument("--format", required=True, choices=FORMATS,
                   help="messages: OpenAI chat JSONL; trl: TRL prompt-completion JSONL; parquet: a hub-style "
                        "folder (data file, dataset card, ML-BOM, chat template)")
    d.add_argument("--out", default=None, help="where it goes (default: beside the artifact, named after it)")
    d.add_argument("--license", default="other", help="parquet: the license written in the dataset card")
    d.set_defaults(func=data_main)
    m = what.add_parser("model", help="a trained model (LoRA merged) or a GGUF base (dequantized) as a folder")
    m.add_argument("artifact", help="a model artifact (runs/store/train-…, teacher-…), model folder or model spec")
    m.add_argument("--out", required=True, help="a new folder for the transformers model")
    m.set_defaults(func=model_main)


def data_main(args: argparse.Namespace) -> int:
    src = Path(args.artifact)
    if not src.exists():
        raise SublimError(f"dataset {src} not found: give a dataset artifact (runs/store/filter-…) or its "
                          "dataset.jsonl")
    folder = src if src.is_dir() else src.parent
    out = Path(args.out) if args.out else folder.parent / f"{folder.name}{SUFFIX[args.format]}"
    if args.format == "parquet" and not args.out:
        out = folder.parent / f"{folder.name}-parquet"
    for path in export_data(src, args.format, out, license_id=args.license):
        print(f"wrote {path}")
    return 0


def model_main(args: argparse.Namespace) -> int:
    print(export_model(args.artifact, Path(args.out)) + f" → {args.out}")
    return 0
