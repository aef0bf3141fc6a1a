"""Benchmark: how much of the measured matmul peak the model's own matrix shapes can reach.

    python benchmarks/matmul_shapes.py                   # the embedded model's shapes, bf16 where it is fast
    python benchmarks/matmul_shapes.py --tokens 256,1024

The throughput figures every run records are fractions of the peak of square 1,024 x 1,024 products
(``sublim.backends.local.throughput``). A small model multiplies much thinner matrices: per layer, a token
block of M rows by the hidden size (576 for SmolLM2-135M) against projections to 576, to the key/value width and
to the MLP width (1,536), forward and the two products of the backward pass. This measures each of those
products at several M, alone and warmed up, and reports their FLOP-weighted rate as a fraction of the same
peak: the ceiling the linear layers of a training step could reach if nothing else took time.

Writes benchmarks/results/matmul-shapes-<cpu|gpu>.json.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from sublim.backends.local.loading import load_model
from sublim.backends.local.throughput import best_rate, matmul_peak
from sublim.core.records import benchmark
from sublim.train.precision import resolve_dtype

HERE = Path(__file__).resolve().parent


def projections(cfg: Any) -> dict[str, tuple[int, int]]:
    """One decoder layer's linear maps, (in, out), from a transformers config."""
    heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    kv = getattr(cfg, "num_key_value_heads", heads) * head_dim
    h, m = cfg.hidden_size, cfg.intermediate_size
    return {"q": (h, heads * head_dim), "k": (h, kv), "v": (h, kv), "o": (heads * head_dim, h),
            "gate": (h, m), "up": (h, m), "down": (m, h)}


def layer_rates(maps: dict[str, tuple[int, int]], tokens: int, dtype: torch.dtype, seconds: float
                ) -> dict[str, dict[str, float]]:
    """Each map's forward (x W^T), input-gradient (g W) and weight-gradient (g^T x) FLOP/s at ``tokens`` rows."""
    return {name: one_map(d_in, d_out, tokens, dtype, seconds) for name, (d_in, d_out) in maps.items()}


def one_map(d_in: int, d_out: int, tokens: int, dtype: torch.dtype, seconds: float) -> dict[str, float]:
    x, w = torch.randn(tokens, d_in, dtype=dtype), torch.randn(d_out, d_in, dtype=dtype)
    g = torch.randn(tokens, d_out, dtype=dtype)
    flops = 2.0 * tokens * d_in * d_out
    return {"forward": best_rate(lambda: F.linear(x, w), flops, seconds),
            "grad_input": best_rate(lambda: g @ w, flops, seconds),
            "grad_weight": best_rate(lambda: g.t() @ x, flops, seconds), "flops": flops}


def ceiling(rates: dict[str, dict[str, float]], peak: float) -> dict[str, float]:
    """FLOP-weighted rates: time for the layer's products at their measured rates, against the same FLOPs at peak."""
    fwd = sum(r["flops"] for r in rates.values())
    t_fwd = sum(r["flops"] / r["forward"] for r in rates.values())
    t_bwd = sum(r["flops"] / r["grad_input"] + r["flops"] / r["grad_weight"] for r in rates.values())
    return {"forward_fraction": round(fwd / t_fwd / peak, 4),
            "training_fraction": round(3 * fwd / (t_fwd + t_bwd) / peak, 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--tokens", default="128,256,512,1024,2048", help="token-block sizes M, comma-separated")
    ap.add_argument("--seconds", type=float, default=0.5, help="timing per product")
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    ap.add_argument("--results-dir", default=str(HERE / "results"))
    args = ap.parse_args()
    dtype = resolve_dtype(args.dtype, torch.device("cpu"))
    maps = projections(load_model(args.model, "cpu").model.config)
    sizes = [int(t) for t in args.tokens.split(",")]
    out = Path(args.results_dir) / "matmul-shapes-cpu.json"
    with benchmark("matmul_shapes", out, config=vars(args)) as results:
        peak = matmul_peak("cpu", dtype=args.dtype)
        by_m = {}
        for m in sizes:
            rates = layer_rates(maps, m, dtype, args.seconds)
            by_m[str(m)] = {**ceiling(rates, peak["flops_per_s"]),
                            "rates": {k: {kk: round(vv) for kk, vv in r.items()} for k, r in rates.items()}}
            print(f"M={m}: {by_m[str(m)]['forward_fraction']} forward, {by_m[str(m)]['training_fraction']} "
                  "training, of the peak", flush=True)
        results.update({"matmul_peak": peak, "dtype": str(dtype).replace("torch.", ""), "projections": maps,
                        "by_tokens": by_m})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
