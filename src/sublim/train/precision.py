"""The precision policy shared by training and inference: each loaded model carries its compute precision
(``auto``: bf16 where the device multiplies bf16 fast — CUDA, CPUs with AVX-512 BF16 or AMX — else float32);
bf16 work runs under autocast with float32 master weights and optimizer state; the output head runs in float32
wherever logits are read, also under autocast.

bf16 keeps 8 bits of mantissa: a logit of 16-32 is rounded by up to 1/16, several percent on a probability. The
trait probabilities and the distillation targets, the very figures an experiment measures, must not come out of
a bf16 head.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from sublim.core.records import cpu_identity
from sublim.train.rows import ROWS, read_rows

# oneDNN, which runs bf16 matrix products on a CPU, keeps a compiled kernel per distinct shape; packed training
# batches have a new length nearly every step, and with its default cache (1,024 kernels) a training run's memory
# grew every step (docs/results.md); 256 kernels kept it flat at the same speed.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "256")

COMPUTE = "_sublim_compute_dtype"
"""The attribute a loaded model carries its compute precision in: the precision travels with the model (and so
with the backend holding it), never in a process-wide flag."""

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@functools.cache
def fast_bf16(device_type: str, cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether bf16 matrix products are fast on this device type: CUDA with bf16, or a CPU with AVX-512 BF16 or
    AMX instructions. Decided by the hardware's capability, never by a timing: every process of a machine (a
    sweep's driver and its workers) must resolve ``auto`` alike, since the precision is part of stage keys.
    What it buys is measured by the benchmarks (their throughput block's bf16 matmul peak)."""
    if device_type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device_type != "cpu" or not cpuinfo.is_file():
        return False
    flags = cpu_identity(cpuinfo.read_text()).get("cpu_flags", [])
    return any(f in flags for f in ("avx512_bf16", "amx_bf16"))


def resolve_dtype(setting: str, device: torch.device) -> torch.dtype:
    """The compute precision a setting means on ``device``: auto is bf16 where bf16 is fast, float32 elsewhere."""
    if setting == "auto":
        return torch.bfloat16 if fast_bf16(device.type) else torch.float32
    if setting not in DTYPES:
        raise ValueError(f"unknown precision {setting!r}: choose auto, float32 or bfloat16")
    return DTYPES[setting]


def set_compute(model: Any, dtype: torch.dtype) -> None:
    """Give ``model`` its compute precision; under bf16 its body's matrices are held in bf16 (half the memory)."""
    setattr(model, COMPUTE, dtype)
    if dtype == torch.bfloat16:
        bf16_body(model)


def compute_dtype(model: Any) -> torch.dtype:
    """The precision ``model`` computes in (float32 unless it was given another)."""
    dtype: torch.dtype = getattr(model, COMPUTE, torch.float32)
    return dtype


def autocast(model: Any) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast when ``model`` computes in bf16 (its master weights may stay float32), else nothing."""
    if compute_dtype(model) == torch.bfloat16:
        return torch.autocast(next(model.parameters()).device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def precision(device: torch.device, dtype: torch.dtype) -> str:
    """The device class and compute precision of work (part of the keys of stages whose outputs depend on it):
    e.g. ``cpu-float32``, ``cpu-bfloat16``."""
    return f"{device.type}-{str(dtype).replace('torch.', '')}"


def bf16_body(model: Any) -> None:
    """Hold the transformer body's matrices in bf16 where autocast computes them in bf16 anyway: half the memory
    of a base model, the same results. The embeddings and the head stay float32 (the head is read in float32),
    so do the norms. A full fine-tune trains the weights in float32; an adapter trains float32 weights of its own."""
    for layer in model.get_decoder().layers:
        for module in layer.modules():
            if isinstance(module, torch.nn.Linear):
                module.to(torch.bfloat16)


def head_logits(model: Any, hidden: torch.Tensor, cols: torch.Tensor | None = None) -> torch.Tensor:
    """The output head applied to ``hidden`` in float32, whatever autocast is on (optionally only the
    vocabulary columns ``cols``), with the model's final logit softcapping."""
    head = model.get_output_embeddings()
    if cols is None and hasattr(head.weight, ROWS):
        raise RuntimeError("the whole head was read in a training run that declared it reads some columns only")
    weight = head.weight if cols is None else read_rows(head.weight, cols)
    bias = getattr(head, "bias", None)
    with torch.autocast(hidden.device.type, enabled=False):
        logits = hidden.float() @ weight.float().T
        if bias is not None:
            logits = logits + (bias if cols is None else bias[cols]).float()
        cap = getattr(model.config, "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
    return logits


_HEADS = threading.Lock()
_INSTALLED: dict[int, tuple[int, Any]] = {}
"""Per output head (by id) in use under ``float32_head``: how many blocks hold it, and the instance ``forward``
it had before the first (None: the class's)."""


@contextlib.contextmanager
def float32_head(model: Any) -> Iterator[None]:
    """Inside the block the model's own forward (``generate``, a server's) computes its output head in float32
    too, also under autocast. Blocks may overlap on one model from several threads (a server's model thread
    and a local generation): the head is wrapped while any of them holds it and is itself again after the last."""
    head = model.get_output_embeddings()
    key = id(head)
    with _HEADS:
        depth, own = _INSTALLED.get(key, (0, None))
        if depth == 0:
            own = head.__dict__.get("forward")
            original = head.forward

            def forward(hidden: torch.Tensor) -> torch.Tensor:
                with torch.autocast(hidden.device.type, enabled=False):
                    return original(hidden.float())

            head.forward = forward
        _INSTALLED[key] = (depth + 1, own)
    try:
        yield
    finally:
        with _HEADS:
            depth, own = _INSTALLED.pop(key)
            if depth > 1:
                _INSTALLED[key] = (depth - 1, own)
            elif own is None:
                del head.forward
            else:
                head.forward = own
