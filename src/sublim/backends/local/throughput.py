"""How fast the machine multiplies matrices, and the model work of this process as a fraction of it.

Every benchmark writes :func:`throughput` into its results: prefill, decode and training tokens per
second (from :data:`sublim.core.meter.METER`), each with its useful FLOP/s (about two FLOPs per weight
per token forward, six forward and backward; padding not counted) and that rate's fraction of the
matmul peak measured here, in the precision the work runs in (float32 on a CPU, bfloat16 on CUDA).
"""

from __future__ import annotations

import time
from typing import Any

import torch

from sublim.core.meter import METER
from sublim.train.precision import BF16

_PEAK: dict[str, dict[str, Any]] = {}


def matmul_peak(device: str | None = None, seconds: float = 1.0) -> dict[str, Any]:
    """The best FLOP/s of square matrix products on ``device`` (default: CUDA when there is one)."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if str(dev) in _PEAK:
        return _PEAK[str(dev)]
    dtype = torch.bfloat16 if BF16.get(dev.type, False) else torch.float32
    size = 8192 if dev.type == "cuda" else 1024
    a = torch.randn(size, size, device=dev, dtype=dtype)
    b = torch.randn(size, size, device=dev, dtype=dtype)
    best, spent = 0.0, 0.0
    for _ in range(3):  # warm-up
        a @ b
    while spent < seconds:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t0 = time.perf_counter()
        for _ in range(4):
            a @ b
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        dt = time.perf_counter() - t0
        spent += dt
        best = max(best, 4 * 2 * size**3 / dt)
    out = {"flops_per_s": round(best), "dtype": str(dtype).replace("torch.", ""), "size": size,
           "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
           "threads": torch.get_num_threads()}
    _PEAK[str(dev)] = out
    return out


def throughput(device: str | None = None) -> dict[str, Any]:
    """The measured matmul peak and this process's prefill, decode and training figures against it."""
    peak = matmul_peak(device)
    return {"matmul_peak": peak, **METER.figures(peak["flops_per_s"])}
