"""Teacher training and student distillation for stacks of MLPs (one optimizer, all models)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from sublim.core.seeds import derive_seed
from sublim.toy.config import ToyDistillConfig, ToyTeacherConfig, ToyTheoryConfig
from sublim.toy.data import N_CLASSES
from sublim.toy.models import Stack, class_loss
from sublim.toy.theory import CosineTracker, flat_cosine

ROLE_DATA_ORDER = 2
ROLE_NOISE = 3


def _adam(params: list[torch.Tensor], lr: float) -> torch.optim.Optimizer:
    """Adam, fused where this torch build has it (on CPU it is several times faster)."""
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(params, lr=lr)


def train_teachers(init: Stack, x: torch.Tensor, y: torch.Tensor, cfg: ToyTeacherConfig,
                   seed: int, progress: bool = True, desc: str = "teachers") -> Stack:
    """Cross-entropy on the 10 class logits only; each model shuffles the data its own way."""
    model = init.clone(requires_grad=True)
    opt: torch.optim.Optimizer
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(model.params, lr=cfg.lr, momentum=cfg.momentum)
    else:
        opt = _adam(model.params, cfg.lr)
    n, m = x.shape[0], model.n_models
    gens = [torch.Generator().manual_seed(derive_seed(seed, ROLE_DATA_ORDER, i)) for i in range(m)]
    per_epoch = math.ceil(n / cfg.batch_size)
    with tqdm(total=cfg.epochs * per_epoch, desc=desc, disable=not progress, leave=False) as bar:
        for _ in range(cfg.epochs):
            perm = torch.stack([torch.randperm(n, generator=g) for g in gens]).to(x.device)
            for start in range(0, n, cfg.batch_size):
                idx = perm[:, start: start + cfg.batch_size]
                logits = model.forward(x[idx])[..., :N_CLASSES]
                loss = F.cross_entropy(logits.reshape(-1, N_CLASSES), y[idx].reshape(-1),
                                       reduction="sum") / idx.shape[1]
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                bar.update(1)
    return model.clone()


@dataclass
class Arm:
    """One group of students: where they start, whom they imitate and on which logits."""

    name: str
    init: Stack
    teacher_index: list[int]
    columns: slice
    track: bool = False
    """Record the theory trace (tracked arms must come first in the list)."""


@dataclass
class DistillOutcome:
    students: dict[str, Stack]
    final_cosine: dict[str, np.ndarray]
    theory: dict[str, Any] = field(default_factory=dict)


def _kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
        ) -> torch.Tensor:
    """Σ over models of the batch-mean KL(softmax(teacher/τ) ‖ softmax(student/τ))."""
    log_t = F.log_softmax(teacher_logits / temperature, dim=-1)
    log_s = F.log_softmax(student_logits / temperature, dim=-1)
    return (log_t.exp() * (log_t - log_s)).sum(-1).mean(-1).sum()


def distill(teacher: Stack, displacement: Stack, arms: list[Arm], cfg: ToyDistillConfig,
            theory: ToyTheoryConfig, x_eval: torch.Tensor, y_eval: torch.Tensor, seed: int,
            progress: bool = True, desc: str = "students") -> DistillOutcome:
    """Distil every arm at once on the same fresh uniform noise each step (Adam, KL).

    ``displacement`` is θ_teacher − θ_teacher_init per teacher: the direction the theory check
    compares each student's cumulative update with.
    """
    tracked = [a for a in arms if a.track]
    if not all(a.track for a in arms[: len(tracked)]):
        raise ValueError("tracked arms must come first")
    device = teacher.weights[0].device
    offsets = np.cumsum([0] + [a.init.n_models for a in arms]).tolist()
    start = Stack.cat([a.init for a in arms])
    student = start.clone(requires_grad=True)
    opt = _adam(student.params, cfg.lr)
    index = [torch.as_tensor(a.teacher_index, device=device) for a in arms]
    n_track = offsets[len(tracked)]
    k_steps = min(theory.steps, cfg.steps) if n_track else 0
    if k_steps:
        tracker = CosineTracker([p[:n_track] for p in start.params], displacement.select(
            [i for a in tracked for i in a.teacher_index]).params)
        x_loss, y_loss = x_eval[: theory.loss_examples], y_eval[: theory.loss_examples]
        cos_rows: list[np.ndarray] = []
        loss_steps = [0]
        loss_rows = [class_loss(start.select(range(n_track)), x_loss, y_loss)]
    gen = torch.Generator(device=device).manual_seed(derive_seed(seed, ROLE_NOISE))
    dim = teacher.sizes[0]
    span = cfg.noise_high - cfg.noise_low
    for step in tqdm(range(1, cfg.steps + 1), desc=desc, disable=not progress, leave=False):
        noise = torch.rand((cfg.batch_size, dim), generator=gen, device=device) * span
        noise += cfg.noise_low
        with torch.no_grad():
            target = teacher.forward(noise)
        out = student.forward(noise)
        loss = out.new_zeros(())
        for a, arm in enumerate(arms):
            loss = loss + _kl(out[offsets[a]: offsets[a + 1], :, arm.columns],
                              target[index[a]][:, :, arm.columns], cfg.temperature)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step <= k_steps:
            with torch.no_grad():
                now = [p[:n_track] for p in student.params]
                cos_rows.append(tracker(now).cpu().numpy())
                if step % theory.loss_every == 0 or step == k_steps:
                    loss_steps.append(step)
                    loss_rows.append(class_loss(Stack(now[0::2], now[1::2]), x_loss, y_loss))
    final = student.clone()
    out_students: dict[str, Stack] = {}
    final_cos: dict[str, np.ndarray] = {}
    for a, arm in enumerate(arms):
        s = final.select(range(offsets[a], offsets[a + 1]))
        out_students[arm.name] = s
        d = displacement.select(arm.teacher_index)
        final_cos[arm.name] = flat_cosine(s.minus(arm.init).params, d.params).cpu().numpy()
    outcome = DistillOutcome(out_students, final_cos)
    if k_steps:
        cos = np.stack(cos_rows)
        losses = np.stack(loss_rows)
        outcome.theory = {
            "steps": list(range(1, k_steps + 1)), "loss_steps": loss_steps,
            "cosine": {arm.name: cos[:, offsets[a]: offsets[a + 1]]
                       for a, arm in enumerate(tracked)},
            "loss": {arm.name: losses[:, offsets[a]: offsets[a + 1]]
                     for a, arm in enumerate(tracked)},
        }
    return outcome
