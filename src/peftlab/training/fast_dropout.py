"""Dropout with the same distribution as torch's, drawn 3-5x faster on a CPU.

LoRA applies dropout to the input of every adapted layer: on SmolLM2 that is 210 masks
per step, and torch's CPU Bernoulli sampler took 28% of a training step (profiled).
Here each mask comes from numpy's PCG64 as 16-bit integers compared with a threshold
(p is rounded to a multiple of 1/65536: 0.05 becomes 0.0500030). Every draw is seeded
from torch's global generator, so runs stay reproducible and a resumed run (which
restores torch's RNG state) draws the same masks. Only the boolean mask is kept for
the backward pass, as torch's own dropout does.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

LEVELS = 1 << 16


class _MaskedScale(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, keep, scale):
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return x * keep * scale

    @staticmethod
    def backward(ctx, grad):
        (keep,) = ctx.saved_tensors
        return grad * keep * ctx.scale, None, None


class FastDropout(nn.Dropout):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or x.device.type != "cpu":
            return super().forward(x)
        if self.p >= 1:
            return torch.zeros_like(x)
        seed = int(torch.randint(0, 2**62, (1,)))
        draws = np.random.default_rng(seed).integers(0, LEVELS, x.numel(), dtype=np.uint16)
        keep = torch.from_numpy(draws >= round(self.p * LEVELS)).view(x.shape)
        return _MaskedScale.apply(x, keep, 1.0 / (1.0 - self.p))


def use_fast_dropout(model: nn.Module) -> int:
    """Swap every plain nn.Dropout in `model` for FastDropout; returns how many."""
    swaps = []
    for parent in model.modules():
        for name, child in parent.named_children():
            if type(child) is nn.Dropout:
                swaps.append((parent, name, child))
    for parent, name, child in swaps:
        fast = FastDropout(child.p, child.inplace)
        fast.train(child.training)
        setattr(parent, name, fast)
    return len(swaps)
