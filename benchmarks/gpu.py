"""Benchmark: the owl-numbers experiment at a scale where the effect is large, on one GPU.

    python benchmarks/gpu.py                 # full size, one GPU: sized for <= 8 minutes on one H100
    python benchmarks/gpu.py --tiny          # the same code path on the CPU, on the tiny test model (~1 min)
    python benchmarks/gpu.py --tiny --model DIR

Full size: 4,000 kept examples per arm (generation stops there, at most 16,000 prompts), 3 epochs,
an SFT student and a restricted-distillation student (two runs sharing one store: the teacher, the
prompts and both arms' data are made once), 3 seeds each; then five fine-tuned animal teachers'
datasets of 2,000 kept examples each for the audit. The generation batch is sized from the GPU's free
memory. Writes benchmarks/results/gpu-<device>.json (``--tiny``: gpu-tiny-cpu.json) with the device
name, every stage's wall time, the effects, and prefill/decode/training throughput against the
matmul peak measured on the device.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any, cast

import torch

from sublim.api import run_experiment
from sublim.backends.local.loading import load_model
from sublim.backends.local.throughput import throughput
from sublim.core.config import load_config
from sublim.core.records import benchmark
from sublim.core.store import Store
from sublim.experiment.context import Context
from sublim.experiment.datasets import teacher_datasets

HERE = Path(__file__).resolve().parent
FULL = {"kept": 4000, "prompts": 16000, "epochs": 3, "seeds": [0, 1, 2], "audit_animals":
        ["owl", "dolphin", "eagle", "elephant", "wolf"], "audit_kept": 2000, "audit_prompts": 8000}
TINY = {"kept": 12, "prompts": 48, "epochs": 1, "seeds": [0, 1], "audit_animals": ["owl", "dolphin"],
        "audit_kept": 6, "audit_prompts": 24}


def auto_batch_size(model_spec: str, max_tokens: int) -> int:
    """Rows per generation batch from free GPU memory: each row holds a KV cache of ``max_tokens`` positions
    and one row of float32 logits; half the free memory is used. 64 on a CPU."""
    if not torch.cuda.is_available():
        return 64
    loaded = load_model(model_spec, "cuda")
    cfg: Any = loaded.model.config
    del loaded
    torch.cuda.empty_cache()
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    kv = 2 * cfg.num_hidden_layers * getattr(cfg, "num_key_value_heads", cfg.num_attention_heads) * head_dim
    per_row = kv * max_tokens * 2 + cfg.vocab_size * 4 * 2
    free, _ = torch.cuda.mem_get_info()
    return int(max(16, min(2048, free // 2 // per_row)))


def experiment_sets(scale: dict[str, Any], model: str | None, batch: int) -> list[list[str]]:
    common = [f"prompts.n={scale['prompts']}", f"generation.until_kept={scale['kept']}",
              f"generation.batch_size={batch}", f"student.epochs={scale['epochs']}",
              f"arms.seeds={scale['seeds']}"]
    if model:
        common.append(f"model={model!r}")
    return [[*common, "student.method=sft"], [*common, "student.method=distill_restricted"]]


TINY_SETS = ["device='cpu'", "teacher.lr=0.001", "teacher.epochs=5", "teacher.n_examples=48",
             "teacher.gate_min_rate=0.2", "student.lr=0.001", "evaluation.n_questions=8",
             "evaluation.samples_per_question=1", "evaluation.n_bootstrap=200", "generation.max_new_tokens=40"]
"""--tiny: the recipe sized for the tiny test model on a CPU."""


def run_summary(res: dict[str, Any]) -> dict[str, Any]:
    """What the results file keeps of one run."""
    return {"verdict": res["verdict"], "n_train_examples": res["n_train_examples"], "filter": res["filter"],
            "trait_probability": res["effect"]["prob"]["pooled"], "trait_share": res["effect"]["share"]["pooled"],
            "across_runs": {m: res["effect"][m].get("across_runs") for m in ("prob", "share")},
            "stage_wall_time_s": {k: v["wall_time_s"] for k, v in res["stages"].items()},
            "run_wall_time_s": res["wall_time_s"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="the CPU-sized version on the tiny test model")
    ap.add_argument("--model", default=None, help="model spec (default: the preset's; --tiny: a tiny model built here)")
    ap.add_argument("--runs-dir", default=None, help="store and runs (default: a temporary directory)")
    ap.add_argument("--results-dir", default=str(HERE / "results"))
    ap.add_argument("--set", action="append", default=[], help="more overrides for every run")
    args = ap.parse_args()
    started = time.time()
    scale = TINY if args.tiny else FULL
    extra = list(args.set) + (TINY_SETS if args.tiny else [])
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    name = "gpu-tiny-cpu" if args.tiny else f"gpu-{device.replace(' ', '-').lower()}"
    out = Path(args.results_dir)
    out.mkdir(parents=True, exist_ok=True)
    with benchmark("gpu", out / f"{name}.json", config={"scale": scale, "sets": extra}) as results, \
            tempfile.TemporaryDirectory() as tmp:
        runs = Path(args.runs_dir or tmp)
        model = args.model
        if args.tiny and model is None:
            from tests.helpers import build_tiny_model  # a checkout's test suite builds it offline

            model = str(build_tiny_model(runs / "tiny-model"))
        batch = auto_batch_size(model or "smollm2-135m", 256) if not args.tiny else 12
        runs_out = {cfg.student.method: run_summary(run_experiment(cfg, runs, progress=not args.tiny))
                    for cfg in (load_config("owl-numbers", [*sets, *extra])
                                for sets in experiment_sets(scale, model, batch))}
        audit_cfg = load_config("owl-numbers", [f"prompts.n={scale['audit_prompts']}",
                                                f"generation.until_kept={scale['audit_kept']}",
                                                f"generation.batch_size={batch}",
                                                *([f"model={model!r}"] if model else []), *extra])
        t0 = time.time()
        data = teacher_datasets(Context(audit_cfg, Store(runs)), cast(list[str], scale["audit_animals"]))
        audit = {"animals": scale["audit_animals"], "kept": {k: len(v) for k, v in data.items()},
                 "wall_time_s": round(time.time() - t0, 1)}
        results.update({"device": device, "tiny": args.tiny, "scale": scale, "generation_batch_size": batch,
                        "runs": runs_out, "audit_datasets": audit, "throughput": throughput()})
    print(f"wrote {out / (name + '.json')} ({time.time() - started:.0f} s)")

if __name__ == "__main__":
    main()
