"""Content-addressed artifacts: caching, resume, provenance and refusal of mismatches in one rule.

An artifact lives in ``<root>/store/<stage>-<key>`` where key = hash(stage, config slice, input
keys). It is complete once ``manifest.json`` exists; the manifest lists the sha256 of every file,
and an artifact whose files no longer match is refused, never reused.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sublim.config import stable_hash
from sublim.errors import SublimError

MANIFEST = "manifest.json"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("sublim", "torch", "transformers", "peft", "gguf", "numpy"):
        with contextlib.suppress(PackageNotFoundError):
            out[pkg] = version(pkg)
    return out


def machine_info() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"platform": platform.platform(), "processor": platform.processor(),
                            "cpu_count": os.cpu_count()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


@dataclass
class Artifact:
    stage: str
    key: str
    path: Path
    manifest: dict[str, Any]

    def file(self, name: str) -> Path:
        return self.path / name


class Store:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @staticmethod
    def key(stage: str, config: dict[str, Any], inputs: dict[str, str]) -> str:
        return stable_hash({"stage": stage, "config": config, "inputs": inputs})

    def path(self, stage: str, key: str) -> Path:
        return self.root / "store" / f"{stage}-{key[:16]}"

    def get(self, stage: str, key: str) -> Artifact | None:
        """The finished, verified artifact, or None if it was never finished."""
        path = self.path(stage, key)
        mpath = path / MANIFEST
        if not mpath.is_file():
            return None
        try:
            manifest = json.loads(mpath.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise SublimError(
                f"artifact {path} has an unreadable manifest: delete that directory to rebuild it"
            ) from None
        if manifest.get("key") != key or manifest.get("stage") != stage:
            raise SublimError(
                f"artifact {path} belongs to another stage or config (manifest key "
                f"{str(manifest.get('key'))[:16]}): delete that directory to rebuild it"
            )
        for name, digest in manifest.get("files", {}).items():
            fpath = path / name
            if not fpath.is_file() or _sha256(fpath) != digest:
                raise SublimError(
                    f"artifact {path} is corrupt: {name} does not match its manifest; "
                    "delete that directory to rebuild it"
                )
        return Artifact(stage, key, path, manifest)

    def begin(self, stage: str, key: str) -> Path:
        """The working directory of an unfinished artifact (kept across interruptions)."""
        path = self.path(stage, key)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def finish(
        self,
        stage: str,
        key: str,
        config: dict[str, Any],
        inputs: dict[str, str],
        started: float,
        **extra: Any,
    ) -> Artifact:
        """Hash every file and write the manifest last (atomically): the artifact is now done."""
        path = self.path(stage, key)
        files = {
            str(p.relative_to(path)): _sha256(p)
            for p in sorted(path.rglob("*"))
            if p.is_file() and p.name != MANIFEST and not p.name.endswith(".tmp")
        }
        manifest = {
            "stage": stage,
            "key": key,
            "config": config,
            "inputs": inputs,
            "files": files,
            "wall_time_s": round(time.time() - started, 3),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "versions": library_versions(),
            "machine": machine_info(),
            **extra,
        }
        tmp = path / (MANIFEST + ".tmp")
        tmp.write_text(json.dumps(manifest, indent=2, default=str))
        os.replace(tmp, path / MANIFEST)
        return Artifact(stage, key, path, manifest)

    def discard(self, stage: str, key: str) -> None:
        shutil.rmtree(self.path(stage, key), ignore_errors=True)


def write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically: readers never see half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, path)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Complete lines of a JSONL file; a torn last line (a kill mid-write) is dropped."""
    rows: list[dict[str, Any]] = []
    if not path.is_file():
        return rows
    with path.open("rb") as fh:
        for raw in fh:
            if not raw.endswith(b"\n"):
                break
            try:
                rows.append(json.loads(raw))
            except json.JSONDecodeError:
                break
    return rows


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as fh:
        for r in rows:
            fh.write(json.dumps(r) + "\n")
    os.replace(tmp, path)
