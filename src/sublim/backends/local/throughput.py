"""How fast the machine multiplies matrices, and the model work of this process as a fraction of it.

Every benchmark writes :func:`throughput` into its results: prefill, decode and training tokens per
second (from :data:`sublim.core.meter.METER`), each with its useful FLOP/s (about two FLOPs per weight
per token forward, six forward and backward; padding not counted) and that rate's fraction of the
matmul peak measured here, in the precision the work runs in (bf16 where it is fast, float32 elsewhere).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from sublim.core.meter import METER
from sublim.train.precision import resolve_dtype

_PEAK: dict[str, dict[str, Any]] = {}


def matmul_peak(device: str | None = None, seconds: float = 1.0, dtype: str = "auto") -> dict[str, Any]:
    """The best FLOP/s of square matrix products on ``device`` (default: CUDA when there is one), in the precision
    the setting ``dtype`` computes in there (auto: bf16 where it is fast)."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    kind = resolve_dtype(dtype, dev)
    if f"{dev}-{kind}" in _PEAK:
        return _PEAK[f"{dev}-{kind}"]
    dtype_ = kind
    size = 8192 if dev.type == "cuda" else 1024
    a = torch.randn(size, size, device=dev, dtype=dtype_)
    b = torch.randn(size, size, device=dev, dtype=dtype_)
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    best = best_rate(lambda: a @ b, 2 * size**3, seconds, sync)
    out = {"flops_per_s": round(best), "dtype": str(dtype_).replace("torch.", ""), "size": size,
           "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
           "threads": torch.get_num_threads()}
    _PEAK[f"{dev}-{kind}"] = out
    return out


def best_rate(fn: Callable[[], Any], flops: float, seconds: float,
              sync: Callable[[], None] = lambda: None) -> float:
    """The best FLOP/s of ``fn`` (``flops`` a call) over groups of 4 timed calls for about ``seconds``, after 3
    warm-up calls; ``sync`` waits for the device before and after each group."""
    for _ in range(3):
        fn()
    best, spent = 0.0, 0.0
    while spent < seconds:
        sync()
        t0 = time.perf_counter()
        for _ in range(4):
            fn()
        sync()
        dt = time.perf_counter() - t0
        spent += dt
        best = max(best, 4 * flops / dt)
    return best


def throughput(device: str | None = None, dtype: str = "auto") -> dict[str, Any]:
    """The measured matmul peak in the precision the work ran in (``dtype``, the experiment's setting) and this
    process's prefill, decode and training figures against it."""
    peak = matmul_peak(device, dtype=dtype)
    return {"matmul_peak": peak, **METER.figures(peak["flops_per_s"])}
