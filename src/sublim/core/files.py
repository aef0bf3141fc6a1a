"""Files that never tear: atomic writes, append-only JSONL that resumes, file digests.

Every writer in sublim goes through these, so a kill at any moment leaves either the old file or
the new one (atomic writes), or a log whose complete lines are all kept (resumable JSONL).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from sublim.core.errors import SublimError

Rows = Sequence[dict[str, Any]]
"""Per-question records (one dict a question), as JSONL files hold them."""


def write_text(path: Path, text: str) -> None:
    """Write ``text`` atomically: readers see the old file or the new one, never half of it."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")  # one per writer
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, default=str))


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Complete lines of a JSONL file; a torn last line (a kill mid-write) is dropped."""
    rows: list[dict[str, Any]] = []
    path = Path(path)
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


def file_digest(*paths: Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes (of several files', concatenated in order), read in chunks."""
    if len(paths) == 1:
        with Path(paths[0]).open("rb") as fh:
            return hashlib.file_digest(fh, algorithm).hexdigest()
    h = hashlib.new(algorithm)
    for path in paths:
        with Path(path).open("rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()


class ResumableJsonl:
    """An append-only JSONL log of rows keyed by ``key`` (default ``index``), for work that may be killed.

    Opening it keeps every complete row already there (a torn last line is dropped, and the file
    rewritten without it); ``add`` appends rows and fsyncs, so what was added survives a kill. Use as
    a context manager::

        with ResumableJsonl(path) as log:
            todo = [i for i in items if i not in log.done]
            ...
            log.add(rows)
    """

    def __init__(self, path: Path, key: str = "index") -> None:
        self.path, self.key = Path(path), key
        self.rows: dict[Any, dict[str, Any]] = {r[key]: r for r in read_jsonl(self.path)}
        write_jsonl(self.path, self.rows.values())
        self._fh: IO[str] | None = None

    @property
    def done(self) -> set[Any]:
        return set(self.rows)

    def __enter__(self) -> ResumableJsonl:
        self._fh = self.path.open("a", encoding="utf-8")
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def add(self, rows: Iterable[dict[str, Any]]) -> None:
        """Append rows (a row whose key is already there replaces it when read back) and fsync."""
        if self._fh is None:
            raise RuntimeError("ResumableJsonl.add outside its with-block")
        for r in rows:
            self._fh.write(json.dumps(r) + "\n")
            self.rows[r[self.key]] = r
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def sorted_rows(self) -> list[dict[str, Any]]:
        return [self.rows[k] for k in sorted(self.rows)]


NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
"""What a run or sweep name may be: a single path component of letters, digits, '.', '_' and '-'."""


def inside(root: Path, path: Path, what: str) -> Path:
    """``path``, after checking that it resolves to a place under ``root`` (links and '..' followed)."""
    base, full = Path(root).resolve(), Path(path).resolve()
    if full != base and base not in full.parents:
        raise SublimError(f"{what} {path} would be written outside {root}: give a plain name (letters, digits, "
                          "'.', '_', '-'), not a path")
    return Path(path)


def check_writable(folder: Path, what: str) -> None:
    """Fail at the start, not after the work, when ``folder`` (created if missing) cannot be written."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-check-{os.getpid()}-{threading.get_ident()}.tmp"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise SublimError(f"{what} {folder} cannot be written ({exc.strerror or type(exc).__name__}): give a "
                          "writable directory (--runs-dir, --out) or fix its permissions") from None
