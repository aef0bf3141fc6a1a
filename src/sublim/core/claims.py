"""Claims: which process is computing a stage right now, so that no stage is computed twice at once.

A claim is a small file beside the artifact's directory, created atomically (a hard link of a fully
written file: it appears whole or not at all, also on NFS). While the holder works, a thread touches
the file every ``heartbeat_s``. Anyone else who needs the stage waits for its manifest, and takes the
claim over when its holder is dead: on the same host, a process that no longer exists (or a reused
pid: its start time differs); on another host, a heartbeat older than ``lease_s``. The holder checks
the claim is still its own before it finishes, so a holder that was presumed dead never overwrites
the work of the one that took over.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from sublim.core.errors import SublimError

HEARTBEAT_S = 10.0
LEASE_S = 120.0


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _alive(pid: int, started: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's process, alive
    return started is None or _start_time(pid) in (None, started)


def me() -> dict[str, Any]:
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "pid_started": _start_time(pid)}


@dataclass
class Holder:
    """Who holds a claim, read from its file."""

    id: str
    host: str
    pid: int
    pid_started: str | None
    age_s: float
    """Seconds since the holder's last heartbeat."""

    def dead(self, lease_s: float = LEASE_S) -> bool:
        if self.host == socket.gethostname():
            return not _alive(self.pid, self.pid_started)
        return self.age_s > lease_s

    def __str__(self) -> str:
        return f"{self.host} pid {self.pid}"


def read_holder(path: Path) -> Holder | None:
    """The holder of the claim at ``path``, or None if there is none."""
    try:
        data = json.loads(path.read_text())
        age = time.time() - path.stat().st_mtime
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return Holder(str(data.get("id")), str(data.get("host")), int(data.get("pid", -1)), data.get("pid_started"),
                  age)


class Claim:
    """A held claim: heartbeats in a thread while used as a context manager, released on exit."""

    def __init__(self, path: Path, claim_id: str, heartbeat_s: float = HEARTBEAT_S) -> None:
        self.path, self.id, self.heartbeat_s = path, claim_id, heartbeat_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def held(self) -> bool:
        holder = read_holder(self.path)
        return holder is not None and holder.id == self.id

    def check(self, what: str) -> None:
        """Raise if another process has taken the claim over (this one was presumed dead)."""
        if not self.held():
            raise SublimError(f"{what}: another process took over this stage while it ran (no heartbeat for "
                              "longer than the lease?); its result is theirs, nothing was overwritten")

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            if not self.held():
                return
            with contextlib.suppress(OSError):
                os.utime(self.path)

    def __enter__(self) -> Claim:
        self._thread = threading.Thread(target=self._beat, daemon=True, name="sublim-claim")
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.held():
            with contextlib.suppress(OSError):
                self.path.unlink()


def try_claim(path: Path, lease_s: float = LEASE_S, heartbeat_s: float = HEARTBEAT_S) -> Claim | Holder:
    """Claim ``path`` for this process: the Claim, or the live Holder that has it. A dead holder's claim is
    taken over."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(3):
        claim_id = uuid.uuid4().hex
        tmp = path.with_name(f"{path.name}.{claim_id}.tmp")
        tmp.write_text(json.dumps({"id": claim_id, **me(), "claimed_at": time.time()}))
        try:
            os.link(tmp, path)  # atomic: fails if a claim exists
            return Claim(path, claim_id, heartbeat_s)
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
        holder = read_holder(path)
        if holder is None:
            continue  # released (or unreadable for a moment): try again
        if not holder.dead(lease_s):
            return holder
        _take_over(path, holder)
    holder = read_holder(path)
    if holder is None:
        raise SublimError(f"cannot claim {path}: its claim file keeps changing; check the store's filesystem")
    return holder


def _take_over(path: Path, dead: Holder) -> None:
    """Remove a dead holder's claim, and only that one: if what was moved aside turns out to be another
    process's fresh claim, it is put back unless a newer one exists (then that process will find it lost)."""
    aside = path.with_name(f"{path.name}.dead-{uuid.uuid4().hex}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    moved = read_holder(aside)
    if moved is not None and moved.id != dead.id:
        with contextlib.suppress(FileExistsError, OSError):
            os.link(aside, path)
    aside.unlink(missing_ok=True)
