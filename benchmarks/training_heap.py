"""Benchmark: why a long process's training peak grows student after student, and what glibc policies do to it.

    python benchmarks/training_heap.py                      # 3 students of 200 examples per policy
    python benchmarks/training_heap.py --students 4 --examples 400

Each allocator policy runs in a fresh process (``--one POLICY``) that trains ``--students`` SFT students of the
embedded model one after another, as a sweep or the defence table does (the base loaded again for each). A
thread samples ``/proc/self/smaps_rollup`` and glibc's ``mallinfo2`` every 0.25 s; per student the benchmark
records its wall time and the sample with the largest resident set: anonymous memory, glibc's heap, what of
it is in use and what is free but held, and what is mapped outside the heap. Policies:

- ``as-is``: the training loop's own (no block from mmap, freed memory kept: fresh pages cost page faults);
- ``mmap-4mb``: blocks of 4 MB and more from mmap (handed back when freed), glibc's default trimming;
- ``trim-each-step``: as-is, and the heap's free pages handed back after every optimizer step.

Writes benchmarks/results/training-heap-cpu.json.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from sublim.backends.local.throughput import throughput
from sublim.core.records import benchmark

HERE = Path(__file__).resolve().parent
POLICIES = ("as-is", "mmap-4mb", "trim-each-step")


class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                "fsmblks", "uordblks", "fordblks", "keepcost")]


def sample() -> dict[str, int]:
    """This process's resident memory (all of it, and its anonymous part) and glibc's heap."""
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    rollup = dict(line.split()[:2] for line in Path("/proc/self/smaps_rollup").read_text().splitlines()[1:])
    m = libc.mallinfo2()
    return {"rss_mb": int(rollup["Rss:"]) >> 10, "anonymous_mb": int(rollup["Anonymous:"]) >> 10,
            "heap_mb": m.arena >> 20, "heap_in_use_mb": m.uordblks >> 20, "heap_free_mb": m.fordblks >> 20,
            "mmapped_mb": m.hblkhd >> 20}


class Sampler:
    """Samples the process every 0.25 s in a thread; keeps the sample with the largest resident set."""

    def __init__(self) -> None:
        self.best: dict[str, int] | None = None
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            s = sample()
            if self.best is None or s["rss_mb"] > self.best["rss_mb"]:
                self.best = s
            time.sleep(0.25)


def apply_policy(policy: str) -> None:
    """Install ``policy`` in the training loop (before any training)."""
    import sublim.train.loop as loop

    libc = ctypes.CDLL("libc.so.6")
    if policy == "mmap-4mb":
        loop.keep_freed_memory = lambda: libc.mallopt(-3, 4 << 20)  # M_MMAP_THRESHOLD
    elif policy == "trim-each-step":
        step = loop.optimizer_step

        def trimmed(*a: Any, **k: Any) -> float:
            loss = step(*a, **k)
            libc.malloc_trim(0)
            return loss

        loop.optimizer_step = trimmed


def one(policy: str, model: str, students: int, n: int) -> list[dict[str, Any]]:
    """Train ``students`` students one after another in this process under ``policy``; measure each."""
    from sublim.backends import LocalBackend, ModelCache
    from sublim.carriers.numbers import make_prompts
    from sublim.train import Example, TrainSettings

    apply_policy(policy)
    sampler = Sampler()
    rng = random.Random(0)
    examples = [Example(p.text, ", ".join(str(rng.randint(100, 999)) for _ in range(8))) for p in make_prompts(n)]
    out = []
    for k in range(students):
        base = LocalBackend(ModelCache("auto", echo=lambda s: None), model)
        with tempfile.TemporaryDirectory() as tmp:
            sampler.best = None
            t0 = time.time()
            base.fine_tune(examples, TrainSettings("sft", 1, 5e-5, 8, k), Path(tmp))
            out.append({"student": k, "wall_s": round(time.time() - t0, 1), "at_peak": sampler.best})
        del base
        print(policy, out[-1], file=sys.stderr, flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--students", type=int, default=3)
    p.add_argument("--examples", type=int, default=200)
    p.add_argument("--one", choices=POLICIES, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.model, args.students, args.examples)))
        return
    with benchmark("training-heap", HERE / "results" / "training-heap-cpu.json", config=vars(args)) as out:
        runs = {}
        for policy in POLICIES:
            cmd = [sys.executable, __file__, "--one", policy, "--model", args.model,
                   "--students", str(args.students), "--examples", str(args.examples)]
            done = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True)
            runs[policy] = json.loads(done.stdout.strip().splitlines()[-1])
        out.update({"policies": runs, "summary": {
            pol: {"first_peak_mb": r[0]["at_peak"]["rss_mb"], "last_peak_mb": r[-1]["at_peak"]["rss_mb"],
                  "mean_wall_s": round(sum(s["wall_s"] for s in r) / len(r), 1)} for pol, r in runs.items()}})
        out["throughput"] = throughput()


if __name__ == "__main__":
    main()
