"""Bottleneck adapters (Houlsby et al. 2019; Pfeiffer et al. 2020).

An adapter is a small residual MLP inserted after a block's output projection:
    h <- h + W_up(gelu(W_down h))
W_up starts at zero, so the adapted model starts out exactly as the base model.
Houlsby places one after the attention output and one after the feed-forward output;
Pfeiffer only after the feed-forward output. The base module is wrapped, not changed.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from peftlab.architecture import features, replace_module

# Attention output projections across common families (feed-forward outputs are found
# from their shapes: architecture.feedforward_outputs).
ATTENTION_OUTPUTS = [
    "*.self_attn.o_proj",
    "*.attention.output.dense",
    "*.attn.c_proj",
    "*.attention.out_lin",
    "*.SelfAttention.o",
    "*.EncDecAttention.o",
    "*.self_attn.out_proj",
    "*.encoder_attn.out_proj",
    "*.cross_attn.o_proj",
]


class Bottleneck(nn.Module):
    def __init__(self, dim: int, size: int):
        super().__init__()
        self.down = nn.Linear(dim, size)
        self.up = nn.Linear(size, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.up(F.gelu(self.down(h)))


class WithAdapter(nn.Module):
    """`base` followed by a bottleneck adapter; `enabled=False` runs the base alone.

    Models read attributes of the layers they own (T5's feed-forward checks
    `self.wo.weight.dtype`): the wrapper answers with the base layer's."""

    def __init__(self, base: nn.Module, size: int):
        super().__init__()
        self.base = base
        self.adapter = Bottleneck(features(base)[1], size)
        self.adapter.to(base.weight.device)
        self.enabled = True

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.base(x)
        return self.adapter(h) if self.enabled else h


def insert_adapters(model, names: list[str], size: int) -> None:
    for name in names:
        replace_module(model, name, WithAdapter(model.get_submodule(name), size))


def is_adapter_param(name: str) -> bool:
    return ".adapter." in name
