"""Many independent MLPs held as one stack of tensors and run with batched matmuls.

Layer l of model m is ``weights[l][m]`` (fan_in × fan_out) and ``biases[l][m]`` (1 × fan_out).
Adam and SGD act elementwise, so one optimizer over the stack trains every model independently
as long as the loss is a sum of per-model losses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from sublim.core.seeds import derive_seed
from sublim.toy.data import N_CLASSES


@dataclass
class Stack:
    """A stack of M same-shaped MLPs: ReLU between layers, raw logits out."""

    weights: list[torch.Tensor]
    biases: list[torch.Tensor]

    @property
    def n_models(self) -> int:
        return int(self.weights[0].shape[0])

    @property
    def params(self) -> list[torch.Tensor]:
        return [t for pair in zip(self.weights, self.biases, strict=True) for t in pair]

    @property
    def sizes(self) -> list[int]:
        return [int(self.weights[0].shape[1])] + [int(w.shape[2]) for w in self.weights]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, D) shared by all models, or (M, B, D) per model → logits (M, B, out)."""
        h = x.expand(self.n_models, -1, -1) if x.dim() == 2 else x
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            h = torch.baddbmm(b, h, w)
            if i < last:
                h = torch.relu(h)
        return h

    def select(self, index: Sequence[int] | torch.Tensor) -> Stack:
        idx = torch.as_tensor(index, dtype=torch.long, device=self.weights[0].device)
        return Stack([w[idx] for w in self.weights], [b[idx] for b in self.biases])

    def clone(self, requires_grad: bool = False) -> Stack:
        return Stack([w.detach().clone().requires_grad_(requires_grad) for w in self.weights],
                     [b.detach().clone().requires_grad_(requires_grad) for b in self.biases])

    def minus(self, other: Stack) -> Stack:
        return Stack([a.detach() - b.detach() for a, b in zip(self.weights, other.weights,
                                                                 strict=True)],
                     [a.detach() - b.detach() for a, b in zip(self.biases, other.biases,
                                                                strict=True)])

    def to(self, device: torch.device | str) -> Stack:
        return Stack([w.to(device) for w in self.weights], [b.to(device) for b in self.biases])

    @staticmethod
    def cat(stacks: Sequence[Stack]) -> Stack:
        n = len(stacks[0].weights)
        return Stack([torch.cat([s.weights[i].detach() for s in stacks]) for i in range(n)],
                     [torch.cat([s.biases[i].detach() for s in stacks]) for i in range(n)])

    def n_params(self) -> int:
        return sum(int(p[0].numel()) for p in self.params)


def _uniform(shape: tuple[int, ...], bound: float, gen: torch.Generator) -> torch.Tensor:
    return (torch.rand(shape, generator=gen, dtype=torch.float32) * 2 - 1) * bound


def init_stack(sizes: Sequence[int], seeds: Sequence[int], init_scale: float,
               n_class: int = N_CLASSES) -> Stack:
    """One model per seed; weights and biases ~ U(±init_scale/√fan_in).

    The last layer's class columns come from the model's own stream and each auxiliary column
    from a stream of its own, so a model built with more auxiliary logits is the same model
    with extra columns: nothing else changes.
    """
    sizes = list(sizes)
    n_layers = len(sizes) - 1
    weights = [torch.empty(len(seeds), a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)]
    biases = [torch.empty(len(seeds), 1, b) for b in sizes[1:]]
    for m, seed in enumerate(seeds):
        gen = torch.Generator().manual_seed(int(seed))
        for layer in range(n_layers):
            fan_in, fan_out = sizes[layer], sizes[layer + 1]
            bound = init_scale / fan_in**0.5
            width = n_class if layer == n_layers - 1 else fan_out
            weights[layer][m, :, :width] = _uniform((fan_in, width), bound, gen)
            biases[layer][m, 0, :width] = _uniform((width,), bound, gen)
            for k in range(width, fan_out):
                aux_gen = torch.Generator().manual_seed(derive_seed(int(seed), 7, k - width))
                weights[layer][m, :, k] = _uniform((fan_in,), bound, aux_gen)
                biases[layer][m, 0, k] = _uniform((1,), bound, aux_gen)[0]
    return Stack(weights, biases)


def perturb(stack: Stack, alpha: float, seeds: Sequence[int]) -> Stack:
    """θ + alpha · std(tensor) · N(0, 1) per model and tensor (the same N(0, 1) for every alpha)."""
    out = stack.clone()
    for m, seed in enumerate(seeds):
        gen = torch.Generator().manual_seed(int(seed))
        for t in out.params:
            src = t[m]
            noise = torch.randn(src.shape, generator=gen, dtype=torch.float32).to(src.device)
            t[m] = src + alpha * src.std() * noise
    return out


@torch.no_grad()
def class_logits(stack: Stack, x: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """Class logits (M, N, 10) on examples x (N, D), computed in chunks."""
    parts = [stack.forward(x[i: i + chunk])[..., :N_CLASSES] for i in range(0, x.shape[0], chunk)]
    return torch.cat(parts, dim=1)


def accuracy(stack: Stack, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """Per-model accuracy of the argmax over the 10 class logits."""
    pred = class_logits(stack, x).argmax(-1)
    return (pred == y).float().mean(1).cpu().numpy().astype(float)


def class_loss(stack: Stack, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """Per-model mean cross-entropy of the 10 class logits (the teacher's task)."""
    logits = class_logits(stack, x)
    m, n, c = logits.shape
    ce = F.cross_entropy(logits.reshape(m * n, c), y.repeat(m), reduction="none")
    return ce.reshape(m, n).mean(1).cpu().numpy().astype(float)
