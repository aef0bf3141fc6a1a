"""Datasets that outlive a session: a store artifact's first rows written as a file to commit, and a committed file
read back into the store as an ``imported`` artifact keyed by its hash, so a later session trains and audits on
exactly the rows the teachers wrote without the teachers."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

from sublim.core.files import read_jsonl
from sublim.experiment.context import Context

FIELDS = ("index", "prompt", "completion")


def export_dataset(art: Any, path: Path, kept: int) -> dict[str, Any]:
    """``art``'s first ``kept`` rows (index, prompt, completion) as ``path``; its provenance for sources.json."""
    rows = read_jsonl(art.file("dataset.jsonl"))[:kept]
    text = "".join(json.dumps({k: r[k] for k in FIELDS}) + "\n" for r in rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return {"artifact": art.key, "rows": len(rows), "sha256": hashlib.sha256(text.encode()).hexdigest()}


def import_dataset(ctx: Context, path: Path, meta: dict[str, Any], label: str) -> Any:
    """The committed file ``path`` as the store artifact ``imported`` {sha256, rows}; its hash checked against
    ``meta`` (its sources.json entry) first."""
    text = path.read_text()
    if hashlib.sha256(text.encode()).hexdigest() != meta["sha256"]:
        raise SystemExit(f"{path}: its sha256 differs from sources.json; restore it with git checkout")

    def build(out: Path) -> dict[str, Any]:
        (out / "dataset.jsonl").write_text(text)
        return {}

    return ctx.stage("imported", {"sha256": meta["sha256"], "rows": meta["rows"]}, {}, label, build)


def plan_commit(plan: Path) -> dict[str, Any]:
    """The commit that last changed the pre-registered plan ``plan``, and when (None before it is committed)."""
    got = subprocess.run(["git", "log", "-1", "--format=%H %cI", "--", str(plan)], cwd=plan.parent,
                         capture_output=True, text=True, check=False).stdout.split()
    return {"file": plan.name, "commit": got[0] if got else None, "committed_at": got[1] if got else None}
