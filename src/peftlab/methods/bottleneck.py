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

from peftlab.config import MethodArgs
from peftlab.errors import ConfigError
from peftlab.methods import head_copies
from peftlab.methods.common import Method, freeze_all_but, head_module_names, own_or_head, targets
from peftlab.models import architecture, selection
from peftlab.models.architecture import features, replace_module
from peftlab.models.loading import ModelInfo

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


def attach_adapter(model, args: MethodArgs, info: ModelInfo):
    names = adapter_targets(model, args)
    head_copies.train_copies(model, head_module_names(model, info))
    insert_adapters(model, names, args.adapter_size)
    freeze_all_but(model, own_or_head(is_adapter_param))
    return model


def adapter_targets(model, args: MethodArgs) -> list[str]:
    """After the feed-forward output projections (read from their shapes), and for
    Houlsby placement after the attention output projections too."""
    if args.target_modules:
        return targets(model, args)
    blocks = targets(model, args)
    names = architecture.feedforward_outputs(model, blocks)
    if args.adapter_placement == "houlsby":
        names += [n for n in blocks if any(selection.matches(n, p) for p in ATTENTION_OUTPUTS)]
    if not names:
        raise ConfigError(
            "method.target_modules",
            None,
            "found no feed-forward or attention output projection for the adapters; name "
            f"them with --target-modules, from: {', '.join(selection.short_names(blocks)[:30])}",
        )
    return sorted(names, key=blocks.index)


METHODS = [
    Method(
        "adapter",
        "Bottleneck adapters after attention and/or feed-forward (Houlsby et "
        "al. 2019; Pfeiffer et al. 2020)",
        attach_adapter,
        "native",
        default_lr=1e-3,
        merge="a bottleneck adapter is nonlinear (GELU); it cannot fold into a weight",
        owns=is_adapter_param,
        family="adapter",
    ),
]
