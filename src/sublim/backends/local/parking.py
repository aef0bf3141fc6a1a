"""A base model trained as its own student: its weights written to a scratch file before a full fine-tune turns it
into the student, and read back into it afterwards.

A full fine-tune needs float32 weights to train. Trained on a copy, the base sat unused beside the student, its
gradients and optimizer state for the whole training (a second copy of the model at the training's peak). Trained
in place, the base is its student's starting point with no second copy, and its own weights come back from the
file: the same values, in the same dtypes (a bf16 body stays bf16), tied weights still one parameter. The file is
unnamed (``tempfile.TemporaryFile``): the system frees it when the process ends, even when it is killed.
"""

from __future__ import annotations

import tempfile
from typing import IO, Any

import torch


def _tensors(model: Any) -> dict[str, torch.Tensor]:
    """Every parameter (a tied one once, under its first name) and every buffer, by name."""
    return {**{f"p:{n}": p for n, p in model.named_parameters()}, **{f"b:{n}": b for n, b in model.named_buffers()}}


def park(model: Any) -> IO[bytes]:
    """``model``'s weights and buffers in an unnamed scratch file (gone with the process, however it ends)."""
    scratch = tempfile.TemporaryFile(prefix="sublim-parked-")  # noqa: SIM115 (kept open: the parked weights)
    torch.save({k: t.detach().cpu() for k, t in _tensors(model).items()}, scratch)
    scratch.flush()
    return scratch


@torch.no_grad()
def unpark(model: Any, scratch: IO[bytes]) -> None:
    """Put the weights and buffers :func:`park` wrote back into ``model`` (trained since), in place: every module
    keeps its parameter objects, so tied weights stay tied."""
    scratch.seek(0)
    saved = torch.load(scratch, map_location="cpu", weights_only=True)
    for key, t in _tensors(model).items():
        t.data = saved[key].to(t.device)
        if isinstance(t, torch.nn.Parameter):
            t.grad = None
