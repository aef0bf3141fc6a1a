"""The precision policy shared by training and inference: bf16 autocast on CUDA with float32 master
weights (unless the experiment asks for float32), nothing on a CPU; and the output head in float32
wherever logits are read, also under autocast.

bf16 rounds logits of 16-32 by up to ~0.06, about ±6% on a probability: the trait probabilities and the
distillation targets, the very figures an experiment measures, must not come out of a bf16 head.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import torch

BF16 = {"cuda": True, "cpu": False}
"""Where bf16 autocast is on, by device type. CUDA's is set from config.dtype (False keeps CUDA in float32,
to mirror a CPU run); the CPU's is off (tests turn it on to check the float32 head)."""


def set_bf16_on_cuda(enabled: bool) -> None:
    BF16["cuda"] = enabled


def autocast(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast where the policy has it on for this device type (float32 master weights)."""
    if BF16.get(device.type, False):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def precision(device: torch.device) -> str:
    """The device class and compute precision of work on ``device`` (part of the keys of stages whose outputs
    depend on it): e.g. ``cpu-float32``, ``cuda-bfloat16``."""
    return f"{device.type}-{'bfloat16' if BF16.get(device.type, False) else 'float32'}"


def bf16_body(model: Any) -> None:
    """Hold the transformer body's matrices in bf16 where autocast computes them in bf16 anyway: half the memory
    of a base model, the same results. The embeddings and the head stay float32 (the head is read in float32),
    so do the norms. A full fine-tune trains a float32 copy; an adapter trains float32 weights of its own."""
    for layer in model.get_decoder().layers:
        for module in layer.modules():
            if isinstance(module, torch.nn.Linear):
                module.to(torch.bfloat16)


def head_logits(model: Any, hidden: torch.Tensor, cols: torch.Tensor | None = None) -> torch.Tensor:
    """The output head applied to ``hidden`` in float32, whatever autocast is on (optionally only the
    vocabulary columns ``cols``), with the model's final logit softcapping."""
    head = model.get_output_embeddings()
    weight = head.weight if cols is None else head.weight[cols]
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
