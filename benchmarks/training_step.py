"""Benchmark: where the time of a training step goes, for the two kinds of training the default experiment runs.

    python benchmarks/training_step.py                 # SmolLM2-135M: a teacher's SFT step, a student's step
    python benchmarks/training_step.py --examples 96

Each method trains in a fresh process (``--one METHOD``) as the local backend trains: a float32 copy of the
model under the compute precision of ``auto``, 8 examples a step, on number-sequence examples like the default
experiment's (distillation from a bf16 copy of the same model). Recorded per method:
- the first optimizer step apart: its seconds, and from the training's start (a method's preparation, such as
  the teacher's distillation targets, included) to its end: the seconds, page faults and system time;
- the later steps: milliseconds a step in forward, backward, gradient clipping and the optimizer, and their
  FLOPs as a fraction of the measured matmul peak (``sublim.backends.local.throughput``);
- the operators that took the most time over the last three steps (torch.profiler, self time).
Writes benchmarks/results/training-step-<cpu|gpu>.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from sublim.core.records import benchmark

HERE = Path(__file__).resolve().parent
PROFILED_STEPS = 3


def examples(n: int) -> list[Any]:
    from sublim.carriers.numbers import make_prompts
    from sublim.train import Example

    rng = random.Random(0)
    return [Example(p.text, ", ".join(str(rng.randint(0, 999)) for _ in range(rng.randint(6, 10))))
            for p in make_prompts(n)]


class Watch:
    """The training's ``on_step``: what the first step cost, and a profile of the last steps."""

    def __init__(self) -> None:
        from sublim.core.meter import METER
        from sublim.train.loop import PHASES

        self.meter, self.phases = METER, PHASES
        self.start = self.mark()
        self.first: dict[str, Any] = {}
        self.profiling = False
        self.profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])

    def mark(self) -> dict[str, Any]:
        use = resource.getrusage(resource.RUSAGE_SELF)
        return {"wall": time.perf_counter(), "faults": use.ru_minflt, "system_s": use.ru_stime,
                "phases": dict(self.phases), "meter": self.meter.snapshot()}

    def __call__(self, step: int, total: int, loss: float) -> None:
        if step == 1:
            self.first = self.mark()
        if step == max(1, total - PROFILED_STEPS) and step < total:
            self.profiler.start()
            self.profiling = True
        if step == total and self.profiling:
            self.profiler.stop()


def seconds_between(a: dict[str, Any], b: dict[str, Any]) -> dict[str, float]:
    return {k: b["phases"].get(k, 0.0) - a["phases"].get(k, 0.0) for k in b["phases"]}


def one(method: str, model_spec: str, n: int) -> dict[str, Any]:
    """Train one student in this process and take its steps apart."""
    from sublim.backends import LocalBackend, ModelCache
    from sublim.backends.local.throughput import matmul_peak
    from sublim.train import TrainSettings
    from sublim.train.loop import train_student

    base = LocalBackend(ModelCache("auto", echo=lambda s: None), model_spec)
    model, tok = base.torch_model()
    teacher = model if method.startswith("distill") else None
    student = copy.deepcopy(model).float()
    watch = Watch()
    settings = TrainSettings(method, 1, 1e-4, 8, 0)
    _, log = train_student(student, tok, examples(n), settings, teacher, watch)
    end, steps = watch.mark(), log["steps"]
    first_s = sum(seconds_between(watch.start, watch.first).values())
    later = seconds_between(watch.first, end)
    work = watch.meter.since(watch.first["meter"])["training"]
    peak = matmul_peak()
    ops = sorted(watch.profiler.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total_us = sum(e.self_cpu_time_total for e in ops)
    return {"method": method, "steps": steps, "precision": base.precision,
            "first_step": {"seconds": round(first_s, 3),
                           "seconds_from_start": round(watch.first["wall"] - watch.start["wall"], 3),
                           "minor_faults": watch.first["faults"] - watch.start["faults"],
                           "system_s": round(watch.first["system_s"] - watch.start["system_s"], 2)},
            "later_steps": {"ms_per_step": {k: round(v / (steps - 1) * 1e3, 1) for k, v in later.items()},
                            "tokens_per_step": round(work["tokens"] / (steps - 1), 1),
                            "fraction_of_peak": round(work["flops"] / work["seconds"] / peak["flops_per_s"], 4),
                            "minor_faults": end["faults"] - watch.first["faults"]},
            "matmul_peak": peak,
            "top_ops": [{"op": e.key, "share": round(e.self_cpu_time_total / total_us, 4), "calls": e.count}
                        for e in ops[:12]]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--examples", type=int, default=160)
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--results-dir", default=str(HERE / "results"))
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.model, args.examples)))
        return
    name = f"training-step-{'gpu' if torch.cuda.is_available() else 'cpu'}"
    Path(args.results_dir).mkdir(parents=True, exist_ok=True)
    with benchmark("training-step", Path(args.results_dir) / f"{name}.json", config=vars(args)) as results:
        for method in ("sft", "distill_restricted"):
            proc = subprocess.run([sys.executable, __file__, "--one", method, "--model", args.model,
                                   "--examples", str(args.examples)], capture_output=True, text=True, check=True)
            results[method] = json.loads(proc.stdout.strip().splitlines()[-1])
            print(json.dumps({k: v for k, v in results[method].items() if k != 'top_ops'}))


if __name__ == "__main__":
    main()
