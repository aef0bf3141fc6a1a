"""How an exchange becomes tokens: the chat template (shared by training and inference), the
completion-only target mask, and batches."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch


def chat_text(tokenizer: Any, user: str, system: str | None = None, assistant: str | None = None) -> str:
    """The model's chat template applied to one exchange (generation prompt when no answer)."""
    messages = []
    if system:
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": user})
    if assistant is not None:
        messages.append({"role": "assistant", "content": assistant})
    text: str = tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=assistant is None
    )
    return text


@dataclass(frozen=True)
class Example:
    """One chat exchange: the user prompt and the assistant's answer (the training target)."""

    prompt: str
    completion: str
    system: str | None = None


def encode_example(tokenizer: Any, ex: Example) -> tuple[list[int], int]:
    """Token ids of prompt + completion and the index where the completion starts."""
    prompt = chat_text(tokenizer, ex.prompt, system=ex.system)
    full = chat_text(tokenizer, ex.prompt, system=ex.system, assistant=ex.completion)
    if not full.startswith(prompt):
        raise ValueError("chat template renders the answer in a way that changes the prompt")
    p_ids = tokenizer.encode(prompt, add_special_tokens=False)
    c_ids = tokenizer.encode(full[len(prompt) :], add_special_tokens=False)
    return p_ids + c_ids, len(p_ids)


def collate(batch: Sequence[tuple[list[int], int]], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Right-padded ids, attention mask, and the mask of positions whose next token is a target."""
    width = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    target_mask = torch.zeros((len(batch), width), dtype=torch.bool)
    for row, (ids, start) in enumerate(batch):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention[row, : len(ids)] = 1
        # position t predicts token t+1: targets are the completion tokens
        target_mask[row, start - 1 : len(ids) - 1] = True
    return {"input_ids": input_ids.to(device), "attention_mask": attention.to(device),
            "target_mask": target_mask.to(device)}


def targets(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The target token at every masked position."""
    return torch.roll(batch["input_ids"], shifts=-1, dims=1)[batch["target_mask"]]
