"""Batched chat generation and next-token probabilities."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
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


def autocast(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on CUDA (float32 master weights), nothing on CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@dataclass
class Completion:
    index: int
    text: str
    n_tokens: int
    finished: bool
    """True when the model ended the answer itself (end-of-turn token) within the budget."""


def _stop_ids(tokenizer: Any) -> list[int]:
    ids = {tokenizer.eos_token_id}
    for tok in ("<|im_end|>", "<end_of_turn>", "<|eot_id|>"):
        tid = tokenizer.convert_tokens_to_ids(tok)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id and tid >= 0:
            ids.add(tid)
    return sorted(i for i in ids if i is not None)


def batches(indices: Sequence[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(indices), size):
        yield list(indices[start : start + size])


@torch.no_grad()
def generate_batch(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    indices: Sequence[int],
    *,
    max_new_tokens: int,
    temperature: float,
    top_p: float = 1.0,
    seed: int = 0,
) -> list[Completion]:
    """Generate one batch; sampling is seeded per batch so a resumed run repeats it exactly."""
    device = next(model.parameters()).device
    tokenizer.padding_side = "left"
    enc = tokenizer(list(prompts), return_tensors="pt", padding=True, add_special_tokens=False).to(device)
    stop = _stop_ids(tokenizer)
    kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens, "eos_token_id": stop,
                              "pad_token_id": tokenizer.pad_token_id}
    if temperature > 0:
        torch.manual_seed(seed)
        kwargs.update(do_sample=True, temperature=temperature, top_p=top_p, top_k=0)
    else:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    with autocast(device):
        out = model.generate(**enc, **kwargs)
    new = out[:, enc["input_ids"].shape[1] :].cpu()
    results = []
    for row, idx in zip(new, indices, strict=True):
        ids = row.tolist()
        finished = False
        for pos, tid in enumerate(ids):
            if tid in stop:
                ids = ids[:pos]
                finished = True
                break
        text = tokenizer.decode(ids, skip_special_tokens=True)
        results.append(Completion(int(idx), text, len(ids), finished))
    return results


@torch.no_grad()
def next_token_probs(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    batch_size: int = 32,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Probability distribution of the first answer token for each prompt: [n_prompts, vocab]."""
    device = next(model.parameters()).device
    tokenizer.padding_side = "left"
    rows = []
    for chunk in batches(range(len(prompts)), batch_size):
        enc = tokenizer([prompts[i] for i in chunk], return_tensors="pt", padding=True,
                        add_special_tokens=False).to(device)
        position_ids = (enc["attention_mask"].cumsum(-1) - 1).clamp(min=0)
        with autocast(device):
            logits = model(**enc, position_ids=position_ids).logits[:, -1, :]
        rows.append(torch.softmax(logits.float(), dim=-1).cpu().numpy())
        if progress:
            progress(len(chunk))
    return np.concatenate(rows, axis=0)
