"""Bottleneck adapters (Houlsby et al. 2019; Pfeiffer et al. 2020), and BitFit deltas.

An adapter is a small residual MLP inserted after a block's output projection:
    h <- h + W_up(gelu(W_down h))
W_up starts at zero, so the adapted model starts out exactly as the base model.
Houlsby places one after the attention output and one after the feed-forward output;
Pfeiffer only after the feed-forward output. The base module is wrapped, not changed.
"""

from __future__ import annotations

import contextlib
import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

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
        from peftlab.architecture import features

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
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, WithAdapter(getattr(parent, child), size))


class BiasDelta(nn.Module):
    """BitFit as a parametrization: bias = frozen base bias + trained delta.

    The base bias is never changed in place, so the base model stays one switch away,
    and merging (folding the delta in) is exact.
    """

    def __init__(self, bias: torch.Tensor):
        super().__init__()
        self.delta = nn.Parameter(torch.zeros_like(bias))
        self.enabled = True

    def forward(self, bias: torch.Tensor) -> torch.Tensor:
        return bias + self.delta if self.enabled else bias


def add_bias_delta(module: nn.Module) -> None:
    from torch.nn.utils import parametrize

    parametrize.register_parametrization(module, "bias", BiasDelta(module.bias))


def merge_bias_deltas(model) -> None:
    from torch.nn.utils import parametrize

    for module in list(model.modules()):
        if parametrize.is_parametrized(module, "bias"):
            parametrize.remove_parametrizations(module, "bias", leave_parametrized=True)


class TrainedCopy(nn.Module):
    """A new module (a classification head) trained as a copy, the original kept frozen:
    the base model stays one switch away (what peft's modules_to_save does)."""

    def __init__(self, original: nn.Module):
        super().__init__()
        self.trained = copy.deepcopy(original)
        self.original = original.requires_grad_(False)
        self.enabled = True

    def forward(self, *args, **kwargs):
        return (self.trained if self.enabled else self.original)(*args, **kwargs)


def train_copies(model, names: list[str]) -> None:
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, TrainedCopy(getattr(parent, child)))


def merge_trained_copies(model) -> None:
    for name, module in list(model.named_modules()):
        if isinstance(module, TrainedCopy):
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, module.trained)


SWITCHABLE = (WithAdapter, BiasDelta, TrainedCopy)


@contextlib.contextmanager
def adapters_disabled(model):
    wrapped = [m for m in model.modules() if isinstance(m, SWITCHABLE)]
    for module in wrapped:
        module.enabled = False
    try:
        yield model
    finally:
        for module in wrapped:
            module.enabled = True


def is_adapter_param(name: str) -> bool:
    return ".adapter." in name


def is_trained_copy_param(name: str) -> bool:
    return name.startswith("trained.") or ".trained." in name


def is_bias_delta_param(name: str) -> bool:
    return name.endswith(".parametrizations.bias.0.delta")
