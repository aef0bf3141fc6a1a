"""Datasets that outlive a session: a store artifact's first rows written as a file to commit, and a committed file
read back into the store as an ``imported`` artifact keyed by its hash, so a later session trains and audits on
exactly the rows the teachers wrote without the teachers."""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from sublim.core.errors import SublimError
from sublim.core.files import read_jsonl
from sublim.experiment.context import Context
from sublim.experiment.datasets import source_data

FIELDS = ("index", "prompt", "completion")
BF16 = ["dtype=bfloat16"]
"""The precision the dose-response and defence plans compute in (their amendment): bf16 on a CPU, as the first
datasets were made, whatever ``auto`` would resolve to on the machine at hand."""


def require_bf16_cpu(plan: Path) -> None:
    """Refuse, in one line, a machine that cannot run ``plan``'s pipeline as its data so far were made: bf16 on a CPU
    with fast bf16 (elsewhere bf16 is emulated, ~100x slower, or the work lands on a GPU with other kernels)."""
    from sublim.train.precision import fast_bf16

    if torch.cuda.is_available() or not fast_bf16("cpu"):
        raise SystemExit(f"{plan.name}: its pipeline computes in bf16 on a CPU with fast bf16 (avx512_bf16 or "
                         "amx_bf16), as its data so far were made; this machine "
                         f"{'has a GPU' if torch.cuda.is_available() else 'lacks fast bf16'}: run it on one that has")


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
    """The commit that first committed the pre-registered plan ``plan`` (the registration: ``commit``,
    ``committed_at``; None before it is committed) and every later commit that changed it (``amendments``, oldest
    first), each with when it was committed."""
    log = subprocess.run(["git", "log", "--reverse", "--format=%H %cI", "--", str(plan)], cwd=plan.parent,
                         capture_output=True, text=True, check=False).stdout.split("\n")
    commits = [dict(zip(("commit", "committed_at"), line.split(), strict=True)) for line in log if line.strip()]
    first = commits[0] if commits else {"commit": None, "committed_at": None}
    return {"file": plan.name, **first, "amendments": commits[1:]}


def plan_precedes(plan: dict[str, Any], finished_at: list[str]) -> bool:
    """Whether the plan's registration (its first commit, not a later amendment) precedes every time in
    ``finished_at`` (ISO times the data were finished); False before the plan is committed."""
    if not plan["committed_at"]:
        return False
    registered = datetime.fromisoformat(plan["committed_at"])
    return all(registered < datetime.fromisoformat(t) for t in finished_at)


@dataclass(frozen=True)
class Pairs:
    """A plan's teacher pairs (an owl and a neutral teacher per seed) and the control, as committed datasets."""

    data: Path
    """Where the datasets (<name>.jsonl) and sources.json are committed."""
    kept: int
    """Samples per dataset."""
    seeds: list[int]
    spares: list[int]
    context: Callable[[int], Context]
    """The pipeline's context for a teacher seed."""


def sources_file(data: Path) -> dict[str, Any]:
    path = data / "sources.json"
    return json.loads(path.read_text()) if path.exists() else {"datasets": {}, "replaced": []}


def write_sources(data: Path, state: dict[str, Any]) -> None:
    data.mkdir(parents=True, exist_ok=True)
    (data / "sources.json").write_text(json.dumps(state, indent=1) + "\n")


def export(pairs: Pairs, state: dict[str, Any], name: str, art: Any) -> None:
    """One dataset's first ``pairs.kept`` rows as <data>/<name>.jsonl, and its provenance into sources.json (with,
    for a dataset made again because its file was lost, the lost file's hash and whether the new one matches)."""
    lost = state.get("lost", {}).pop(name, None)
    state["datasets"][name] = {"kept": art.manifest["filter"]["kept"], "pass_rate": art.manifest["filter"]["pass_rate"],
                               "data_finished_at": art.manifest["finished_at"],
                               **export_dataset(art, pairs.data / f"{name}.jsonl", pairs.kept)}
    if lost is not None:
        state["datasets"][name]["made_again"] = {"lost_sha256": lost["sha256"],
                                                 "same": lost["sha256"] == state["datasets"][name]["sha256"]}
    if not state.get("lost"):
        state.pop("lost", None)
    write_sources(pairs.data, state)
    print(f"exported {name}: {state['datasets'][name]['rows']} rows", flush=True)


def generate_pairs(pairs: Pairs, banned: list[str], control: bool = True) -> None:
    """Every source's data (the base model's own, ``control``, too when asked), the spare rule applied to a pair
    (replaced together, recorded); each dataset is exported as soon as it is made (sources.json updated), so a
    sitting that ends early keeps what it finished, and the next makes only the rest (the neutral half of a pair
    whose owl half is committed, say)."""
    state = sources_file(pairs.data)
    for name in [n for n in state["datasets"] if not (pairs.data / f"{n}.jsonl").is_file()]:
        state.setdefault("lost", {})[name] = state["datasets"].pop(name)  # recorded, never committed: made again
    every = pairs.seeds + pairs.spares
    done = [s for s in every if f"owl-{s}" in state["datasets"] and f"neutral-{s}" in state["datasets"]]
    tried = done + [r["seed"] for r in state["replaced"]]
    for seed in [s for s in every if s not in tried]:
        if len(done) == len(pairs.seeds):
            break
        ctx = pairs.context(seed)
        short = []
        for kind in ("owl", "neutral"):
            if f"{kind}-{seed}" in state["datasets"]:  # exported in an earlier sitting: kept, not made again
                continue
            try:
                art = source_data(ctx, kind, kind if kind == "owl" else "neutral", banned)[1]
            except SublimError as why:
                short.append(f"{kind}: {str(why)[:200]}")
                break
            if art.manifest["filter"]["kept"] < pairs.kept:
                short.append(f"{kind}: {art.manifest['filter']['kept']} samples pass the filter")
                break
            export(pairs, state, f"{kind}-{seed}", art)
        if short:
            state["datasets"].pop(f"owl-{seed}", None)
            (pairs.data / f"owl-{seed}.jsonl").unlink(missing_ok=True)
            state["replaced"].append({"seed": seed, "why": "; ".join(short)})
            write_sources(pairs.data, state)
            continue
        done.append(seed)
    if len(done) < len(pairs.seeds):
        raise SystemExit(f"only teacher seeds {done} of {every} give {pairs.kept} samples: {state['replaced']}")
    if control and "control" not in state["datasets"]:
        export(pairs, state, "control", source_data(pairs.context(pairs.seeds[0]), "control", "", banned)[1])


def sitting_args(doc: str | None, data: Path, results: Path, max_students: int) -> argparse.Namespace:
    """The command line every pre-registered student plan shares: where the store is, whether this sitting only
    makes the datasets, how many students it trains at most, where the results go."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs-dir", default="runs")
    ap.add_argument("--generate-only", action="store_true", help=f"make the datasets and write them to {data}")
    ap.add_argument("--max-students", type=int, default=max_students, help="students to train in this sitting at most")
    ap.add_argument("--results-dir", default=str(results))
    return ap.parse_args()


def teacher_seeds(meta: dict[str, Any]) -> list[int]:
    """The teacher seeds of a plan's committed pairs (its ``owl-<seed>`` datasets), in order."""
    return sorted(int(k.split("-")[1]) for k in meta if k.startswith("owl-"))
