"""Benchmark: peak memory and saved size of a LoRA student against a full fine-tune, on the embedded model.

    python benchmarks/student_memory.py                 # SmolLM2-135M, CPU (or the GPU when there is one)
    python benchmarks/student_memory.py --examples 64 --epochs 1

Each method trains in a fresh process (``--one METHOD``) through the local backend's own fine-tuning path,
on number-sequence examples like the default experiment's: peak resident memory (VmHWM) after loading the
model and after training, the training's own peak (the difference), on a GPU the peak allocated CUDA memory,
the wall time and the size of what is saved. Writes benchmarks/results/student-memory-<cpu|gpu>.json.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from sublim.backends.local.throughput import throughput
from sublim.core.records import benchmark

HERE = Path(__file__).resolve().parent


def peak_rss_mb() -> float:
    text = Path("/proc/self/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", text).group(1)) / 1024  # type: ignore[union-attr]


def one(method: str, model: str, n: int, epochs: int, out: Path) -> dict[str, Any]:
    """Train one student in this process and measure it."""
    from sublim.backends import LocalBackend, ModelCache
    from sublim.carriers.numbers import make_prompts
    from sublim.train import Example, TrainSettings

    rng = random.Random(0)
    examples = [Example(p.text, ", ".join(str(rng.randint(100, 999)) for _ in range(8))) for p in make_prompts(n)]
    base = LocalBackend(ModelCache("auto", echo=lambda s: None), model)
    loaded, _ = base.torch_model()
    cuda = next(loaded.parameters()).device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    after_load = peak_rss_mb()
    gpu_load = torch.cuda.max_memory_allocated() / 2**20 if cuda else None
    t0 = time.time()
    log = base.fine_tune(examples, TrainSettings(method, epochs, 1e-4 if method == "lora" else 5e-5, 8, 0), out)
    saved = sum(f.stat().st_size for f in (out / "model").glob("*.safetensors"))
    return {"method": method, "examples": n, "epochs": epochs, "steps": log["steps"],
            "peak_rss_mb_after_load": round(after_load, 1), "peak_rss_mb": round(peak_rss_mb(), 1),
            "training_peak_mb": round(peak_rss_mb() - after_load, 1),
            **({"cuda_peak_allocated_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1),
                "cuda_allocated_mb_after_load": round(gpu_load or 0.0, 1)} if cuda else {}),
            "wall_time_s": round(time.time() - t0, 1), "saved_bytes": saved,
            "trainable_parameters": sum(p.numel() for p in loaded.parameters()) if method != "lora" else None,
            "throughput": throughput()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--examples", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--results-dir", default=str(HERE / "results"))
    args = ap.parse_args()
    if args.one:
        with tempfile.TemporaryDirectory() as tmp:
            print(json.dumps(one(args.one, args.model, args.examples, args.epochs, Path(tmp))))
        return
    name = f"student-memory-{'gpu' if torch.cuda.is_available() else 'cpu'}"
    dest = Path(args.results_dir) / f"{name}.json"
    with benchmark("student-memory", dest, config=vars(args)) as results:
        runs = {}
        for method in ("sft", "lora"):
            proc = subprocess.run([sys.executable, __file__, "--one", method, "--model", args.model, "--examples",
                                   str(args.examples), "--epochs", str(args.epochs)], capture_output=True,
                                  text=True, check=True)
            runs[method] = json.loads(proc.stdout.strip().splitlines()[-1])
            print(method, {k: v for k, v in runs[method].items() if k != "throughput"})
        full, lora = runs["sft"], runs["lora"]
        key = "cuda_peak_allocated_mb" if "cuda_peak_allocated_mb" in full else "training_peak_mb"
        results.update({"model": args.model, "runs": runs, "memory_measure": key,
                        "lora_over_full_training_peak": round(lora[key] / full[key], 3) if full[key] else None,
                        "lora_over_full_process_peak": round(lora["peak_rss_mb"] / full["peak_rss_mb"], 3),
                        "adapter_over_full_saved": round(lora["saved_bytes"] / full["saved_bytes"], 4)})
    print(json.dumps({k: v for k, v in results.items() if k != "runs"}, indent=1))
    print(f"wrote {dest}")


if __name__ == "__main__":
    main()
