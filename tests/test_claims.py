"""The store under several processes: a stage is computed once at a time, a dead holder's claim is taken over."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import socket
import time
from pathlib import Path

import pytest

from sublim.core.claims import Claim, Holder, read_holder, try_claim
from sublim.core.errors import SublimError
from sublim.core.store import Store

STAGE, CONFIG, INPUTS = "generate", {"n": 1}, {"model": "m"}
KEY = Store.key(STAGE, CONFIG, INPUTS)


def _build_slowly(root: str, log: str, pause: float) -> None:
    """A process computing the shared stage: it records each build it starts."""
    def build(path: Path) -> dict[str, object]:
        with open(log, "a") as fh:
            fh.write(f"{os.getpid()}\n")
        time.sleep(pause)
        (path / "data.txt").write_text("made once")
        return {"by": os.getpid()}

    Store(Path(root), poll_s=0.05).compute(STAGE, KEY, CONFIG, INPUTS, build)


def _spawn(root: Path, log: Path, pause: float) -> multiprocessing.Process:
    proc = multiprocessing.get_context("spawn").Process(target=_build_slowly, args=(str(root), str(log), pause))
    proc.start()
    return proc


def test_two_processes_compute_a_shared_stage_once(tmp_path: Path) -> None:
    log = tmp_path / "builds.log"
    procs = [_spawn(tmp_path, log, 1.0) for _ in range(3)]
    for p in procs:
        p.join(240)  # three spawned interpreters importing torch: slow on a loaded 2-core machine
        assert p.exitcode == 0
    assert len(log.read_text().split()) == 1  # three processes, one build
    art = Store(tmp_path).get(STAGE, KEY)
    assert art is not None and (art.path / "data.txt").read_text() == "made once"
    assert not Store(tmp_path).claim_path(STAGE, KEY).exists()  # released


def test_a_killed_holder_is_taken_over_and_its_work_dir_reused(tmp_path: Path) -> None:
    log = tmp_path / "builds.log"
    victim = _spawn(tmp_path, log, 600.0)
    store = Store(tmp_path, poll_s=0.05)
    for _ in range(400):
        if log.exists():
            break
        time.sleep(0.05)
    holder = read_holder(store.claim_path(STAGE, KEY))
    assert holder is not None and holder.pid == victim.pid and not holder.dead()
    assert isinstance(try_claim(store.claim_path(STAGE, KEY)), Holder)  # alive: not taken
    (store.path(STAGE, KEY) / "partial.txt").write_text("from the victim")
    assert victim.pid is not None
    os.kill(victim.pid, signal.SIGKILL)
    victim.join(10)

    def build(path: Path) -> dict[str, object]:
        assert (path / "partial.txt").read_text() == "from the victim"  # resumes in the same directory
        (path / "data.txt").write_text("finished by the taker")
        return {}

    art, built = store.compute(STAGE, KEY, CONFIG, INPUTS, build)
    assert built and (art.path / "data.txt").read_text() == "finished by the taker"


def _claim_file(path: Path, host: str, pid: int, started: str | None, age_s: float) -> None:
    path.write_text(json.dumps({"id": "other", "host": host, "pid": pid, "pid_started": started}))
    t = time.time() - age_s
    os.utime(path, (t, t))


def test_another_hosts_claim_is_taken_over_only_after_its_lease(tmp_path: Path) -> None:
    path = tmp_path / "x.claim"
    _claim_file(path, "elsewhere.example", 1, None, age_s=5)
    got = try_claim(path, lease_s=60)
    assert isinstance(got, Holder) and got.host == "elsewhere.example"
    _claim_file(path, "elsewhere.example", 1, None, age_s=120)
    assert isinstance(try_claim(path, lease_s=60), Claim)


def test_a_reused_pid_does_not_keep_a_claim_alive(tmp_path: Path) -> None:
    path = tmp_path / "x.claim"
    _claim_file(path, socket.gethostname(), os.getpid(), "1", age_s=0)  # our pid, another start time
    assert isinstance(try_claim(path), Claim)


def test_a_holder_presumed_dead_finds_its_claim_lost(tmp_path: Path) -> None:
    store = Store(tmp_path)

    def build(path: Path) -> dict[str, object]:  # meanwhile another process takes the stage over
        _claim_file(store.claim_path(STAGE, KEY), "elsewhere.example", 1, None, age_s=0)
        return {}

    with pytest.raises(SublimError, match="took over"):
        store.compute(STAGE, KEY, CONFIG, INPUTS, build)
    assert store.get(STAGE, KEY) is None  # no manifest written over the taker's work
    assert read_holder(store.claim_path(STAGE, KEY)).host == "elsewhere.example"  # type: ignore[union-attr]
