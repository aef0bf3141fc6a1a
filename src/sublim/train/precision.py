"""The precision policy shared by training and inference: bf16 autocast on CUDA with float32
master weights (unless the experiment asks for float32), nothing on a CPU."""

from __future__ import annotations

import contextlib
from typing import Any

import torch

BF16_ON_CUDA = {"enabled": True}
"""Set from config.dtype: False keeps CUDA in float32 (to mirror a CPU run)."""


def set_bf16_on_cuda(enabled: bool) -> None:
    BF16_ON_CUDA["enabled"] = enabled


def autocast(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on CUDA (float32 master weights), nothing on CPU."""
    if device.type == "cuda" and BF16_ON_CUDA["enabled"]:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
