"""The training loop every student method shares: completion-only targets, AdamW, linear warmup
then decay, gradient clipping. Only the loss (and what a method prepares) differs."""

from __future__ import annotations

import collections
import contextlib
import ctypes
import gc
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from sublim.core.errors import SublimError
from sublim.core.meter import METER
from sublim.core.peak import release_freed_memory
from sublim.train.cost import training_flops_per_token
from sublim.train.encode import Example, collate, encode_example
from sublim.train.methods import METHODS
from sublim.train.methods.base import shared_prefix_len
from sublim.train.packing import packed_training
from sublim.train.precision import autocast
from sublim.train.resume import Saver, load_state, save_state
from sublim.train.rows import rows_trained
from sublim.train.settings import TrainSettings

PHASES: collections.defaultdict[str, float] = collections.defaultdict(float)
"""Seconds this process's optimizer steps spent in each phase (forward, backward, clip, optimizer), as
``benchmarks/training_step.py`` reads them."""


def adamw(params: list[torch.nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """AdamW without weight decay, as one fused kernel where torch has one for the device (on a CPU the per-tensor
    loop costs several times the fused kernel's time a step; docs/results.md)."""
    try:
        return torch.optim.AdamW(params, lr=lr, weight_decay=0.0, fused=True)
    except (RuntimeError, TypeError):  # an older torch, or a device without the fused kernel
        return torch.optim.AdamW(params, lr=lr, weight_decay=0.0)


def keep_freed_memory() -> None:
    """Have glibc keep freed memory for reuse instead of handing it back to the system.

    Every step allocates gradients the size of the weights, and a vocabulary-sized one for the embedding;
    glibc serves blocks that large with fresh pages from the system, and touching them for the first time each
    step costs page faults, not arithmetic (a fifth of a small student's step; docs/results.md). Process-wide
    and lasting; the process keeps its peak memory. A no-op off glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-4, 0)  # M_MMAP_MAX: no block from mmap, so a freed block stays in the heap
        libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD: give memory back only above 1 GiB free at the top
    except (OSError, AttributeError):
        pass


class Lent:
    """A teacher model handed over to training, which takes the last reference to it: what the method keeps of it
    (distillation targets) stays, the weights are freed before the student's optimizer state is made. (A model
    passed as a plain argument stays referenced by the caller's call until training returns.)"""

    def __init__(self, model: Any) -> None:
        self._model: Any | None = model

    def take(self) -> Any:
        model, self._model = self._model, None
        return model


@dataclass
class Training:
    """What every optimizer step of one training run uses."""

    model: Any
    pad_id: int
    encoded: Sequence[Any]
    method: Any
    state: Any
    params: list[torch.nn.Parameter]
    opt: torch.optim.Optimizer
    flops: tuple[int, int]  # per computed token (body), per target token (head)


def optimizer_step(run: Training, chunk: list[int], batch_size: int) -> float:
    """One optimizer step over the examples ``chunk``, in micro-batches of ``batch_size`` whose gradients add up,
    each weighted by its share of the step's target tokens; gradients clipped to norm 1. Returns the step's loss."""
    model, (per_body, per_head) = run.model, run.flops
    device = next(model.parameters()).device
    micro = [chunk[m : m + batch_size] for m in range(0, len(chunk), batch_size)]
    batches = [collate([run.encoded[i] for i in idx], run.pad_id, device) for idx in micro]
    targets = [int(b["target_mask"].sum()) for b in batches]
    step_loss = 0.0
    for idx, batch, n_tgt in zip(micro, batches, targets, strict=True):
        t0 = time.perf_counter()
        with autocast(model):  # a per-token loss, weighted by its share of the step's targets
            loss = run.method.loss(model, batch, run.state, idx) * (n_tgt / sum(targets))
        t1 = time.perf_counter()
        loss.backward()
        PHASES["forward"] += t1 - t0
        PHASES["backward"] += time.perf_counter() - t1
        step_loss += float(loss.detach())
        n_tok = int(batch["attention_mask"].sum())
        # forward and backward: about 6 FLOPs per weight per token computed (a shared prefix once), the head only
        # at the targets
        computed = n_tok - shared_prefix_len(batch) * (len(idx) - 1)
        METER.add("training", n_tok, time.perf_counter() - t0, per_body * computed + per_head * n_tgt)
    t0 = time.perf_counter()
    torch.nn.utils.clip_grad_norm_(run.params, 1.0)
    t1 = time.perf_counter()
    run.opt.step()
    run.opt.zero_grad(set_to_none=True)
    PHASES["clip"] += t1 - t0
    PHASES["optimizer"] += time.perf_counter() - t1
    METER.add("training", 0, time.perf_counter() - t0, 0)
    return step_loss


@contextlib.contextmanager
def checkpointing(model: Any, on: bool) -> Iterator[None]:
    """Inside the block (when ``on``) activations are recomputed in the backward pass: memory for time."""
    if on:
        if hasattr(model, "activation_checkpointing_enable"):  # its name since transformers 5.x
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    try:
        yield
    finally:
        if on:
            (getattr(model, "activation_checkpointing_disable", None) or model.gradient_checkpointing_disable)()


def lr_factor(step: int, total: int, warmup: int) -> float:
    """The learning rate of optimizer step ``step`` (from 0) of ``total``, as a share of the configured one:
    linear warmup over ``warmup`` steps, then linear decay to zero."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    return max(0.0, (total - step) / max(1, total - warmup))


def run_epochs(run: Training, settings: TrainSettings, rng: random.Random,
               on_step: Callable[[int, int, float], None] | None, saver: Saver | None = None
               ) -> tuple[list[float], dict[str, Any]]:
    """Every optimizer step of the run (each epoch in a new order), under linear warmup then linear decay to
    zero, going on from a saved state where ``saver`` has one and saving as it goes; returns the steps' losses
    and, for a resumed run, where it resumed and the seconds its earlier sittings took."""
    per_step = settings.batch_size * settings.grad_accum
    total = math.ceil(len(run.encoded) / per_step) * settings.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(run.opt, lambda step: lr_factor(step, total, settings.warmup_steps))
    saved = load_state(saver.path, run.params, run.opt, sched, total) if saver and saver.path else None
    losses, before = saved or ([], 0.0)
    resumed = {"resumed_from_step": len(losses), "seconds_before_resume": round(before, 3)} if saved else {}
    for i, loss in enumerate(losses):  # the steps an earlier sitting made, for the progress bar and tracking
        if on_step:
            on_step(i + 1, total, loss)
    started, step = time.monotonic(), 0
    for _epoch in range(settings.epochs):
        order = list(range(len(run.encoded)))
        rng.shuffle(order)  # drawn again for the epochs a resumed run has done: the same orders
        for start in range(0, len(order), per_step):
            step += 1
            if step <= len(losses):
                continue
            losses.append(optimizer_step(run, order[start : start + per_step], settings.batch_size))
            sched.step()
            if on_step:
                on_step(len(losses), total, losses[-1])
            if saver and saver.path and step < total and saver.due():
                save_state(saver.path, run.params, run.opt, sched, losses, before + time.monotonic() - started,
                           total)
                saver.last = time.monotonic()
    return losses, resumed


def train_student(
    model: Any,
    tokenizer: Any,
    examples: Sequence[Example],
    settings: TrainSettings,
    teacher: Any | None = None,
    on_step: Callable[[int, int, float], None] | None = None,
    saver: Saver | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Train ``model`` in place and return it (an adapter method: wrapped in its adapter) with a training log.

    An optimizer step sees ``batch_size`` × ``grad_accum`` examples, in micro-batches of ``batch_size`` whose
    gradients add up, each weighted by its share of the step's target tokens (for a per-token loss, the step
    is then the whole batch's). With a ``saver``, the run saves its state as it goes and an interrupted run goes
    on from its last save (:mod:`sublim.train.resume`): the same model as an uninterrupted run."""
    method = METHODS.get(settings.method, "student.method")
    if isinstance(teacher, Lent):
        teacher = teacher.take()
    if method.needs_teacher and teacher is None:
        raise SublimError(f"student method {method.name} needs a teacher model to learn from")
    torch.manual_seed(settings.seed)
    rng = random.Random(settings.seed)
    encoded = [encode_example(tokenizer, ex) for ex in examples]
    state = None
    if method.prepare is not None:
        model, state = method.prepare(model, tokenizer, encoded, settings, teacher)
    teacher = None  # what the method needs of the teacher is in its state: the rest can be freed now
    gc.collect()
    release_freed_memory()
    head_columns = method.head_columns(state) if method.head_columns is not None else None
    ids = [row for row, _ in encoded] + [[tokenizer.pad_token_id]]  # every token a batch can read
    with rows_trained(model, ids, head_columns) as own_rows, \
            checkpointing(model, settings.gradient_checkpointing), packed_training(model):
        params = [p for p in model.parameters() if p.requires_grad] + own_rows
        opt = adamw(params, settings.lr)
        keep_freed_memory()
        model.train()
        run = Training(model, tokenizer.pad_token_id, encoded, method, state, params, opt,
                       training_flops_per_token(model))
        losses, resumed = run_epochs(run, settings, rng, on_step, saver)
        del run, opt
    model.eval()
    if method.finish is not None:
        model = method.finish(model)
    log = {"steps": len(losses), "examples": len(encoded), "loss_first": losses[0] if losses else None,
           "loss_last": losses[-1] if losses else None, "losses": losses, **resumed}
    return model, log
