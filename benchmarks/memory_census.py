"""Benchmark: where a run's resident memory goes, stage by stage (a measurement, not a timing).

    python benchmarks/memory_census.py                 # the default run, in a fresh store
    python benchmarks/memory_census.py --stop-after 12 # its first twelve stages only

For each stage that computes: its peak resident memory (the kernel's high-water mark, as every manifest records
it), and at that peak (sampled every 0.2 s) how much of glibc's heap is in use and how much is free but held;
and at the stage's start and end, the bytes of live torch tensors (each storage once) and the heap's figures.
Resident memory above what is in use is what the allocator keeps after earlier work: a stage can peak well
above what it needs. glibc only (elsewhere the heap figures are absent). Writes
benchmarks/results/memory-census-<cpu|gpu>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import torch

import sublim.core.store as store_module
from sublim.api import run_experiment
from sublim.core.config import load_config
from sublim.core.records import benchmark

HERE = Path(__file__).resolve().parent
MB = 1 / (1 << 20)


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ["arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost"]]


def _libc() -> Any:
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _Mallinfo2
        return libc
    except (OSError, AttributeError):
        return None


LIBC = _libc()


def heap() -> dict[str, int] | None:
    """glibc's heap now (MB): in use, free but held, and the blocks it mapped on their own."""
    if LIBC is None:
        return None
    m = LIBC.mallinfo2()
    return {"in_use_mb": round(m.uordblks * MB), "free_held_mb": round(m.fordblks * MB),
            "mmapped_mb": round(m.hblkhd * MB)}


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def live_tensors_mb() -> dict[str, int]:
    """Bytes of the live torch tensors' storages (each once), by dtype (MB)."""
    seen: set[int] = set()
    by: dict[str, float] = {}
    for o in gc.get_objects():
        with contextlib.suppress(Exception):
            if isinstance(o, torch.Tensor) and not o.is_meta:
                s = o.untyped_storage()
                if s.data_ptr() and s.data_ptr() not in seen:
                    seen.add(s.data_ptr())
                    key = str(o.dtype).replace("torch.", "")
                    by[key] = by.get(key, 0.0) + s.nbytes() * MB
    return {k: round(v) for k, v in by.items()}


class Census:
    """Wraps the store's per-stage peak measurement: one row per stage, a sampler thread for the peak's heap."""

    def __init__(self, stop_after: int | None) -> None:
        self.rows: list[dict[str, Any]] = []
        self.stop_after = stop_after
        self.now: dict[str, Any] = {"on": False, "max": 0.0, "heap": None}
        self.inner = store_module.measured_peak
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        while True:
            r = rss_mb()
            if self.now["on"] and r > self.now["max"]:
                self.now.update(max=r, heap=heap())
            time.sleep(0.2)

    @contextlib.contextmanager
    def measured(self) -> Iterator[dict[str, float | None]]:
        row: dict[str, Any] = {"stage": _stage_label(), "start": {"heap": heap(), "tensors": live_tensors_mb()}}
        self.now.update(on=True, max=0.0, heap=None)
        with self.inner() as box:
            yield box
        self.now["on"] = False
        row.update(peak_rss_mb=box.get("peak_rss_mb"), heap_at_peak=self.now["heap"],
                   end={"rss_mb": round(rss_mb()), "heap": heap(), "tensors": live_tensors_mb()})
        self.rows.append(row)
        if self.stop_after and len(self.rows) >= self.stop_after:
            raise _Enough


class _Enough(Exception):
    """Raised after the last stage a census was asked for (the run stops there)."""


def _stage_label() -> str:
    """The stage and label of the store call being measured (read from the caller's frames)."""
    f: FrameType | None = sys._getframe()
    while f is not None:
        loc = f.f_locals
        if isinstance(loc.get("stage"), str) and "key" in loc:
            return f"{loc['stage']}/{(loc.get('extra') or {}).get('label', '')}"
        f = f.f_back
    return "?"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="owl-numbers")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--stop-after", type=int, default=None, help="stages to measure before stopping the run")
    ap.add_argument("--name", default=None)
    args = ap.parse_args()
    which = "gpu" if torch.cuda.is_available() else "cpu"
    name = args.name or f"memory-census-{which}"
    census = Census(args.stop_after)
    store_module.measured_peak = census.measured
    with benchmark("memory-census", HERE / "results" / f"{name}.json", config=vars(args)) as out, \
            tempfile.TemporaryDirectory() as runs:
        started = rss_mb()
        with contextlib.suppress(_Enough):
            run_experiment(load_config(args.preset, args.set), Path(runs), progress=False, echo=lambda _: None)
        out.update({"rss_at_start_mb": round(started), "stages": census.rows,
                    "complete": args.stop_after is None or len(census.rows) < args.stop_after})


if __name__ == "__main__":
    main()
