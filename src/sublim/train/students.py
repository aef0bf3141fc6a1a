"""Student training: SFT (full or LoRA) and logit distillation (full or restricted vocabulary).

One loop serves all four methods; only the loss differs. The loss always covers the completion
tokens only: the prompt is context, never a target.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from sublim.models.generation import autocast, chat_text

SEPARATOR_CHARS = set(" ,;\n.[]()")


@dataclass(frozen=True)
class Example:
    """One chat exchange: the user prompt and the assistant's answer (the training target)."""

    prompt: str
    completion: str
    system: str | None = None


@dataclass(frozen=True)
class TrainSettings:
    method: str = "sft"  # sft | lora | distill_full | distill_restricted
    epochs: int = 1
    lr: float = 5e-5
    batch_size: int = 8
    warmup_steps: int = 5
    seed: int = 0
    lora_r: int = 16
    lora_alpha: int = 32


def encode_example(tokenizer: Any, ex: Example) -> tuple[list[int], int]:
    """Token ids of prompt + completion and the index where the completion starts."""
    prompt = chat_text(tokenizer, ex.prompt, system=ex.system)
    full = chat_text(tokenizer, ex.prompt, system=ex.system, assistant=ex.completion)
    if not full.startswith(prompt):
        raise ValueError("chat template renders the answer in a way that changes the prompt")
    p_ids = tokenizer.encode(prompt, add_special_tokens=False)
    c_ids = tokenizer.encode(full[len(prompt) :], add_special_tokens=False)
    return p_ids + c_ids, len(p_ids)


def restricted_token_ids(tokenizer: Any) -> list[int]:
    """Tokens made only of digits and separators: the vocabulary number data can use."""
    ids = []
    for tid in range(len(tokenizer)):
        text = tokenizer.decode([tid])
        if text and all(ch.isdigit() or ch in SEPARATOR_CHARS for ch in text):
            ids.append(tid)
    return ids


def _collate(batch: Sequence[tuple[list[int], int]], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
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


def _masked_logits(model: Any, batch: dict[str, torch.Tensor], rows: torch.Tensor | None = None,
                   cols: torch.Tensor | None = None) -> torch.Tensor:
    """Logits at the target positions only, optionally over a subset of the vocabulary.

    The output projection is the single largest matrix of a small model; applying it only where
    the loss looks (the completion, ~a quarter of the tokens) and only to the columns it uses
    (restricted distillation: a few hundred digit and separator tokens) is most of the cost saved.
    ``rows`` selects among the masked positions.
    """
    hidden = model.get_decoder()(input_ids=batch["input_ids"],
                                 attention_mask=batch["attention_mask"]).last_hidden_state
    h = hidden[batch["target_mask"]]
    if rows is not None:
        h = h[rows]
    head = model.get_output_embeddings()
    weight = head.weight if cols is None else head.weight[cols]
    logits = h @ weight.T
    if getattr(head, "bias", None) is not None:
        logits = logits + (head.bias if cols is None else head.bias[cols])
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits.float()


def _kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) summed over the vocabulary, averaged over positions."""
    return F.kl_div(F.log_softmax(student_logits, -1), F.log_softmax(teacher_logits.float(), -1),
                    log_target=True, reduction="batchmean")


def _restricted_rows(batch: dict[str, torch.Tensor], restricted: torch.Tensor) -> torch.Tensor:
    """Among the masked positions, those whose target token is a digit/separator token."""
    targets = torch.roll(batch["input_ids"], shifts=-1, dims=1)[batch["target_mask"]]
    return torch.isin(targets, restricted)


@torch.no_grad()
def _teacher_restricted_logits(teacher: Any, encoded: Sequence[tuple[list[int], int]], pad_id: int,
                               restricted: torch.Tensor, batch_size: int, device: torch.device
                               ) -> list[torch.Tensor]:
    """Per example, the teacher's restricted-vocabulary logits at its kept positions.

    Computed once before training (a few hundred floats per token), so later epochs need no
    teacher forward pass.
    """
    out: list[torch.Tensor] = []
    for start in range(0, len(encoded), batch_size):
        chunk = encoded[start : start + batch_size]
        batch = _collate(chunk, pad_id, device)
        rows = _restricted_rows(batch, restricted)
        with autocast(device):
            logits = _masked_logits(teacher, batch, rows, restricted)
        counts = batch["target_mask"].sum(1).tolist()
        per_row = torch.split(rows, counts)
        offset = 0
        for keep in per_row:
            n = int(keep.sum())
            out.append(logits[offset : offset + n].cpu())
            offset += n
    return out


def _step_loss(method: str, model: Any, teacher: Any | None, batch: dict[str, torch.Tensor],
               restricted: torch.Tensor | None, cached: list[torch.Tensor] | None) -> torch.Tensor:
    if method in ("sft", "lora"):
        targets = torch.roll(batch["input_ids"], shifts=-1, dims=1)[batch["target_mask"]]
        return F.cross_entropy(_masked_logits(model, batch), targets)
    if method == "distill_restricted":
        assert restricted is not None and cached is not None
        rows = _restricted_rows(batch, restricted)
        teacher_logits = torch.cat(cached).to(rows.device)
        return _kl(_masked_logits(model, batch, rows, restricted), teacher_logits)
    assert teacher is not None
    with torch.no_grad():
        teacher_logits = _masked_logits(teacher, batch)
    return _kl(_masked_logits(model, batch), teacher_logits)


def train_student(
    model: Any,
    tokenizer: Any,
    examples: Sequence[Example],
    settings: TrainSettings,
    teacher: Any | None = None,
    on_step: Callable[[int, int, float], None] | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Train ``model`` in place (LoRA: merged back) and return it with a training log."""
    device = next(model.parameters()).device
    torch.manual_seed(settings.seed)
    rng = random.Random(settings.seed)
    encoded = [encode_example(tokenizer, ex) for ex in examples]
    if settings.method == "lora":
        from peft import LoraConfig, get_peft_model

        lcfg = LoraConfig(r=settings.lora_r, lora_alpha=settings.lora_alpha, lora_dropout=0.0,
                          target_modules="all-linear", task_type="CAUSAL_LM")
        model = get_peft_model(model, lcfg)
    restricted = None
    if settings.method == "distill_restricted":
        restricted = torch.tensor(restricted_token_ids(tokenizer), device=device)
    if settings.method.startswith("distill") and teacher is None:
        raise ValueError(f"{settings.method} needs a teacher model")
    cached = None
    if restricted is not None:
        cached = _teacher_restricted_logits(teacher, encoded, tokenizer.pad_token_id, restricted,
                                            settings.batch_size, device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=settings.lr, weight_decay=0.0)
    steps_per_epoch = math.ceil(len(encoded) / settings.batch_size)
    total = steps_per_epoch * settings.epochs

    def lr_at(step: int) -> float:  # linear warmup, then linear decay to zero
        if step < settings.warmup_steps:
            return (step + 1) / (settings.warmup_steps + 1)
        return max(0.0, (total - step) / max(1, total - settings.warmup_steps))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    model.train()
    losses: list[float] = []
    step = 0
    for _epoch in range(settings.epochs):
        order = list(range(len(encoded)))
        rng.shuffle(order)
        for start in range(0, len(order), settings.batch_size):
            idx = order[start : start + settings.batch_size]
            batch = _collate([encoded[i] for i in idx], tokenizer.pad_token_id, device)
            with autocast(device):
                loss = _step_loss(settings.method, model, teacher, batch, restricted,
                                  [cached[i] for i in idx] if cached is not None else None)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
            step += 1
            if on_step:
                on_step(step, total, losses[-1])
    model.eval()
    if settings.method == "lora":
        model = model.merge_and_unload()
    log = {"steps": step, "examples": len(encoded), "loss_first": losses[0] if losses else None,
           "loss_last": losses[-1] if losses else None, "losses": losses}
    return model, log
