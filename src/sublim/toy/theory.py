"""The theory check: does a student's imitation update point toward its teacher's displacement?

Cloud et al. (2025) show that one small gradient step of imitation, taken from the teacher's own
initialization, has a non-negative inner product with the teacher's displacement θ_T − θ_0. Here
the cosine between the student's cumulative update θ_t − θ_S0 and θ_T − θ_T0 (all parameters
flattened, one number per model) is recorded step by step. For a cross-init student the same
teacher displacement is used, so its cosine is expected to stay near 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def flat_dot_norms(update: Sequence[torch.Tensor], direction: Sequence[torch.Tensor],
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-model ⟨u, d⟩, ‖u‖², ‖d‖² over all tensors (leading dim = model).

    Sums within a tensor run in its own dtype; the totals are float64.
    """
    dot = torch.zeros(update[0].shape[0], dtype=torch.float64, device=update[0].device)
    uu = torch.zeros_like(dot)
    dd = torch.zeros_like(dot)
    for u, d in zip(update, direction, strict=True):
        dims = tuple(range(1, u.dim()))
        u, d = u.detach(), d.detach()
        dot += (u * d).sum(dims).double()
        uu += (u * u).sum(dims).double()
        dd += (d * d).sum(dims).double()
    return dot, uu, dd


def flat_cosine(update: Sequence[torch.Tensor], direction: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per-model cosine between two parameter lists, each flattened over all its tensors.

    A zero vector on either side gives cosine 0 (no update has no direction).
    """
    dot, uu, dd = flat_dot_norms(update, direction)
    denom = (uu * dd).sqrt()
    return torch.where(denom > 0, dot / denom.clamp_min(1e-300), torch.zeros_like(dot))


class CosineTracker:
    """Cosine of (θ_t − θ_0) with a fixed direction, step after step, without reallocating.

    The update goes into preallocated buffers and the inner products run as batched matmuls,
    so tracking costs a few passes over the parameters per step.
    """

    def __init__(self, start: Sequence[torch.Tensor], direction: Sequence[torch.Tensor]) -> None:
        self.start = [s.detach().clone() for s in start]
        self.direction = [d.detach().reshape(d.shape[0], -1, 1) for d in direction]
        self.buffers = [torch.empty_like(s) for s in self.start]
        dd = torch.zeros(self.start[0].shape[0], dtype=torch.float64, device=start[0].device)
        for d in self.direction:
            dd += torch.bmm(d.transpose(1, 2), d).reshape(-1).double()
        self.dd = dd

    @torch.no_grad()
    def __call__(self, current: Sequence[torch.Tensor]) -> torch.Tensor:
        dot = torch.zeros_like(self.dd)
        uu = torch.zeros_like(self.dd)
        for cur, s, buf, d in zip(current, self.start, self.buffers, self.direction, strict=True):
            torch.sub(cur.detach(), s, out=buf)
            u = buf.reshape(buf.shape[0], 1, -1)
            dot += torch.bmm(u, d).reshape(-1).double()
            uu += torch.bmm(u, u.transpose(1, 2)).reshape(-1).double()
        denom = (uu * self.dd).sqrt()
        return torch.where(denom > 0, dot / denom.clamp_min(1e-300), torch.zeros_like(dot))
