"""The content-addressed store: finished artifacts are reused, broken ones refused."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from sublim.core.errors import SublimError
from sublim.core.files import read_jsonl, write_jsonl
from sublim.core.store import Store


def _make(store: Store, stage: str = "generate", cfg: dict | None = None) -> tuple[str, Path]:
    cfg = cfg or {"a": 1}
    key = Store.key(stage, cfg, {"model": "m"})
    path = store.begin(stage, key)
    write_jsonl(path / "samples.jsonl", [{"index": 0, "text": "1, 2"}])
    store.finish(stage, key, cfg, {"model": "m"}, time.time(), label="x")
    return key, path


def test_key_depends_on_everything():
    k = Store.key("s", {"a": 1}, {"m": "x"})
    assert k == Store.key("s", {"a": 1}, {"m": "x"})
    assert k != Store.key("t", {"a": 1}, {"m": "x"})
    assert k != Store.key("s", {"a": 2}, {"m": "x"})
    assert k != Store.key("s", {"a": 1}, {"m": "y"})


def test_finished_artifact_is_reused_with_manifest(tmp_path: Path):
    store = Store(tmp_path)
    key, path = _make(store)
    art = store.get("generate", key)
    assert art is not None and art.path == path
    m = art.manifest
    assert m["key"] == key and "samples.jsonl" in m["files"] and "torch" in m["versions"]
    assert "wall_time_s" in m and "machine" in m


def test_unfinished_artifact_is_not_reused(tmp_path: Path):
    store = Store(tmp_path)
    key = Store.key("generate", {"a": 1}, {})
    store.begin("generate", key)
    assert store.get("generate", key) is None


def test_corrupt_file_is_refused(tmp_path: Path):
    store = Store(tmp_path)
    key, path = _make(store)
    with (path / "samples.jsonl").open("a") as fh:
        fh.write('{"index": 1, "text": "tampered"}\n')
    with pytest.raises(SublimError, match="corrupt") as exc:
        store.get("generate", key)
    assert "delete" in str(exc.value) and "\n" not in str(exc.value)
    (path / "samples.jsonl").unlink()
    with pytest.raises(SublimError, match="corrupt"):
        store.get("generate", key)


def test_mismatched_or_unreadable_manifest_is_refused(tmp_path: Path):
    store = Store(tmp_path)
    key, path = _make(store)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["key"] = "0" * 64
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SublimError, match="another stage or config"):
        store.get("generate", key)
    (path / "manifest.json").write_text("{not json")
    with pytest.raises(SublimError, match="unreadable manifest"):
        store.get("generate", key)


def test_torn_jsonl_line_is_dropped(tmp_path: Path):
    p = tmp_path / "x.jsonl"
    p.write_bytes(b'{"index": 0}\n{"index": 1}\n{"index": 2, "comp')
    assert [r["index"] for r in read_jsonl(p)] == [0, 1]
    assert read_jsonl(tmp_path / "missing.jsonl") == []
