"""One training recipe: the method and its hyperparameters."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TrainSettings:
    method: str = "sft"
    """A registered student method (sft, lora, distill_full, distill_restricted, …)."""
    epochs: int = 1
    lr: float = 5e-5
    batch_size: int = 8
    warmup_steps: int = 5
    seed: int = 0
    lora_r: int = 16
    lora_alpha: int = 32
    grad_accum: int = 1
    """Micro-batches of ``batch_size`` per optimizer step."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass instead of keeping them (less memory, ~a third more time)."""
