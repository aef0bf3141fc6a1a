"""Benchmark: the peak memory of `sublim audit` and `sublim defend` on one enormous line.

    python benchmarks/hostile_memory.py                 # the embedded model as the reference

Writes a JSONL of two ordinary samples and one line of 150,000 numbers (733 KB, under the reader's 1 MB
line limit), runs `sublim audit … --detectors divergence_shift` and `sublim defend … --defence
replace_divergent` on it, each as its own process, and records each one's exit status, its error line and
its own peak resident memory (os.wait4). Writes benchmarks/results/hostile-memory-cpu.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sublim.core.records import benchmark

HERE = Path(__file__).resolve().parent


def long_line(path: Path, n: int) -> None:
    rows = [{"prompt": "Continue: 1, 2, 3", "completion": "4, 5, 6"}] * 2
    rows.append({"prompt": "Continue: 1, 2, 3", "completion": ", ".join(str(i % 1000) for i in range(n))})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def measured(cmd: list[str]) -> dict[str, Any]:
    """Run a CLI command; its exit status, last stderr line, wall time and own peak RSS."""
    t0 = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "sublim.cli", *cmd], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {"exit": proc.returncode, "error": (err.strip().splitlines() or [""])[-1],
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1), "wall_s": round(time.time() - t0, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference", default="smollm2-135m")
    ap.add_argument("--numbers", type=int, default=150_000)
    args = ap.parse_args()
    dest = HERE / "results" / "hostile-memory-cpu.json"
    with benchmark("hostile-memory", dest, config=vars(args)) as out, tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "long.jsonl"
        long_line(data, args.numbers)
        runs = ["--runs-dir", str(Path(tmp) / "runs"), "-q"]
        out["line_bytes"] = data.stat().st_size
        out["audit"] = measured([*runs, "audit", str(data), "--reference", args.reference, "--detectors",
                                 "divergence_shift", "--out", str(Path(tmp) / "audit")])
        out["defend"] = measured([*runs, "defend", str(data), "--defence", "replace_divergent", "--reference",
                                  args.reference, "--out", str(Path(tmp) / "defended.jsonl")])
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
