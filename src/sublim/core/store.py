"""Content-addressed artifacts: caching, resume, provenance and refusal of mismatches in one rule.

An artifact lives in ``<root>/store/<stage>-<key>`` where key = hash(stage, config slice, input
keys). It is complete once ``manifest.json`` exists; the manifest lists the sha256 of every file,
and an artifact whose files no longer match is refused, never reused.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sublim.core.claims import HEARTBEAT_S, LEASE_S, Claim, Holder, me, try_claim
from sublim.core.errors import SublimError
from sublim.core.files import file_digest, inside, write_json
from sublim.core.meter import METER
from sublim.core.peak import measured_peak, release_freed_memory
from sublim.core.records import library_versions, machine_info

MANIFEST = "manifest.json"


def stable_hash(obj: Any) -> str:
    """sha256 of canonical JSON: key order and float formatting never change the hash."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class Artifact:
    stage: str
    key: str
    path: Path
    manifest: dict[str, Any]

    def file(self, name: str) -> Path:
        return self.path / name


_VERIFIED: dict[str, tuple[tuple[str, int, int], ...]] = {}
"""Artifacts this process has hashed, with their files' sizes and modification times then."""


def _file_stats(path: Path, files: dict[str, Any]) -> tuple[tuple[str, int, int], ...]:
    out = []
    for name in sorted(files):
        try:
            st = (path / name).stat()
        except OSError:
            return ()
        out.append((name, st.st_size, st.st_mtime_ns))
    return tuple(out)


def read_manifest(path: Path) -> dict[str, Any]:
    """An artifact's manifest: a JSON object with its stage, key and file list, or a one-line refusal."""
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SublimError(f"artifact {path} has an unreadable manifest ({type(exc).__name__}): delete that directory "
                          "to rebuild it") from None
    if not isinstance(manifest, dict):
        raise SublimError(f"artifact {path} has a malformed manifest (not a JSON object): delete that directory "
                          "to rebuild it")
    missing = [("file list" if k == "files" else k) for k in ("stage", "key", "files")
               if not isinstance(manifest.get(k), dict if k == "files" else str)]
    if missing:
        raise SublimError(f"artifact {path} has a manifest without its {' and '.join(missing)}, so it cannot be "
                          "verified: delete that directory to rebuild it")
    return manifest


BUILDS = "builds.jsonl"
"""In ``root/store``: one line per stage computed (stage, key, host, pid, when), appended by whoever computed it."""


class Store:
    """Artifacts under ``root/store``; safe for several processes (and hosts, on a shared filesystem) at once:
    a stage is computed under a claim (:mod:`sublim.core.claims`), so no two compute it together."""

    def __init__(self, root: Path, lease_s: float = LEASE_S, heartbeat_s: float = HEARTBEAT_S,
                 poll_s: float = 1.0) -> None:
        self.root = Path(root)
        self.lease_s, self.heartbeat_s, self.poll_s = lease_s, heartbeat_s, poll_s

    @staticmethod
    def key(stage: str, config: dict[str, Any], inputs: dict[str, str]) -> str:
        return stable_hash({"stage": stage, "config": config, "inputs": inputs})

    def path(self, stage: str, key: str) -> Path:
        return inside(self.root, self.root / "store" / f"{stage}-{key[:16]}", "artifact")

    def get(self, stage: str, key: str) -> Artifact | None:
        """The finished, verified artifact, or None if it was never finished."""
        path = self.path(stage, key)
        mpath = path / MANIFEST
        if not mpath.is_file():
            return None
        manifest = read_manifest(path)
        if manifest.get("key") != key or manifest.get("stage") != stage:
            raise SublimError(
                f"artifact {path} belongs to another stage or config (manifest key "
                f"{str(manifest.get('key'))[:16]}): delete that directory to rebuild it"
            )
        files = manifest["files"]
        seen = _file_stats(path, files)
        if _VERIFIED.get(str(path)) != seen:  # hash once per process while no file changed
            for name, digest in files.items():
                fpath = path / name
                if not fpath.is_file() or file_digest(fpath) != digest:
                    raise SublimError(
                        f"artifact {path} is corrupt: {name} does not match its manifest; "
                        "delete that directory to rebuild it"
                    )
            _VERIFIED[str(path)] = seen
        return Artifact(stage, key, path, manifest)

    def builds(self, stage: str | None = None) -> list[dict[str, Any]]:
        """The store's build log (who built which artifact, when, in how long), optionally one stage's."""
        path = self.root / "store" / BUILDS
        rows = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()] \
            if path.is_file() else []
        return [r for r in rows if stage is None or r.get("stage") == stage]

    def claim_path(self, stage: str, key: str) -> Path:
        path = self.path(stage, key)
        return path.with_name(path.name + ".claim")

    def compute(self, stage: str, key: str, config: dict[str, Any], inputs: dict[str, str],
                build: Callable[[Path], dict[str, Any]], on_wait: Callable[[Holder], None] | None = None,
                **extra: Any) -> tuple[Artifact, bool]:
        """The finished artifact and whether this call built it: reused when finished; else built here under
        the stage's claim (``build(path)`` writes the files and returns what else the manifest records), or,
        while another live process holds the claim, waited for (``on_wait`` is told who holds it, once)."""
        told = False
        while True:
            done = self.get(stage, key)
            if done is not None:
                return done, False
            got = try_claim(self.claim_path(stage, key), self.lease_s, self.heartbeat_s)
            if isinstance(got, Claim):
                break
            if on_wait is not None and not told:
                on_wait(got)
                told = True
            time.sleep(self.poll_s)
        with got:
            done = self.get(stage, key)  # finished between the look and the claim
            if done is not None:
                return done, False
            path = self.begin(stage, key)
            started, work = time.time(), METER.snapshot()
            release_freed_memory()
            with measured_peak() as peak:
                more = build(path)
            got.check(f"stage {stage} ({path})")
            return self.finish(stage, key, config, inputs, started, **extra, **more, work=METER.since(work),
                               **peak), True

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
            str(p.relative_to(path)): file_digest(p)
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
            "built_by": me(),
            **extra,
        }
        write_json(path / MANIFEST, manifest)
        line = {"stage": stage, "key": key, **me(), "finished_at": manifest["finished_at"],
                "wall_time_s": manifest["wall_time_s"]}
        with (self.root / "store" / BUILDS).open("a", encoding="utf-8") as fh:  # one short append: whole lines
            fh.write(json.dumps(line) + "\n")
        return Artifact(stage, key, path, manifest)
