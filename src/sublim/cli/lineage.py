"""``sublim lineage``: a dataset's provenance, and whether a student shares its generator's initialization."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from sublim.audit.lineage import CLEAR, UNKNOWN, cyclonedx_bom, dataset_card, lineage_check
from sublim.core.errors import SublimError
from sublim.core.files import write_json, write_text


def add(sub: Any) -> None:
    p = sub.add_parser("lineage", help="provenance of a dataset; does a student share its generator's init?")
    p.add_argument("action", choices=["check", "export"],
                   help="check: exit 1 when the student shares (or may share) the generator's initialization; "
                        "export: CycloneDX ML-BOM + dataset card")
    p.add_argument("--dataset", required=True, help="a dataset artifact (runs/store/filter-… or its dataset.jsonl)")
    p.add_argument("--student", default=None, help="the model you plan to train on it")
    p.add_argument("--allow-unknown", action="store_true", help="check: exit 0 when the lineage is unknown")
    p.add_argument("--out", default=None, help="export: directory (default: beside the dataset)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    data = Path(args.dataset)
    if args.action == "check":
        if not args.student:
            raise SublimError("lineage check needs --student MODEL (catalog name, .gguf or model directory)")
        res = lineage_check(args.student, data)
        print(f"{res['status']}: {res['reason']}")
        if res["status"] == CLEAR or (res["status"] == UNKNOWN and args.allow_unknown):
            return 0
        return 1
    bom = cyclonedx_bom(data, args.student)
    out = Path(args.out) if args.out else data.resolve().parent
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "bom.cdx.json", bom)
    write_text(out / "DATASET_CARD.md", dataset_card(data))
    print(f"wrote {out / 'bom.cdx.json'} and {out / 'DATASET_CARD.md'}")
    return 0
